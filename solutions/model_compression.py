"""Reference solutions for labs/exercises/model_compression.py (lab 12)."""

from __future__ import annotations


def quantize_int8(w):
    import torch

    if w.dim() != 2:
        raise ValueError("quantize_int8 expects a 2-D weight")
    amax = w.detach().float().abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def magnitude_prune(w, sparsity):
    import torch

    if not 0 <= sparsity <= 1:
        raise ValueError("sparsity must be in [0, 1]")
    k = round(sparsity * w.numel())
    out = w.detach().clone()
    if k:
        idx = torch.topk(w.detach().abs().flatten(), k, largest=False).indices
        out.view(-1)[idx] = 0
    return out


def distillation_loss(student_logits, teacher_logits, targets, temperature=2.0, alpha=0.5):
    import torch.nn.functional as F

    t = temperature
    s = student_logits.float().flatten(0, -2)
    z = teacher_logits.float().flatten(0, -2)
    kl = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(z / t, -1), log_target=True, reduction="batchmean")
    ce = F.cross_entropy(s, targets.flatten())
    return alpha * t * t * kl + (1 - alpha) * ce


def inference_weight_bytes(n_params, bits, group_size=64):
    if bits == 16:
        return 2.0 * n_params
    if bits in (8, 4):
        return n_params * (bits / 8 + 2 / group_size)
    raise ValueError(f"bits must be 16, 8 or 4, got {bits}")


def quantized_all_gather(shard, group=None):
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    q, scale = quantize_int8(shard)
    qs = [torch.empty_like(q) for _ in range(n)]
    ss = [torch.empty_like(scale) for _ in range(n)]
    dist.all_gather(qs, q, group=group)
    dist.all_gather(ss, scale, group=group)
    full = torch.cat([a.float() * b for a, b in zip(qs, ss)])
    sent = (n - 1) * (q.numel() * q.element_size() + scale.numel() * scale.element_size())
    return full, sent
