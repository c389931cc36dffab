"""Pruning (part of concept 12, model_compression): magnitude pruning, unstructured and structured.

Unstructured: zero the round(s n) weights of smallest |w| of the blocks' matmuls (wq wk wv wo w1 w2 w3),
per matrix (`scope=layer`) or with one threshold over all of them (`scope=global`). The shapes and the
dense FLOPs do not change; the zeros are kept zero during fine-tuning by masking each weight's gradient.

Structured: remove whole heads and FFN channels. A channel j of the SwiGLU MLP is row j of w1 and w3 and
column j of w2; a query head h is rows h hd..(h+1) hd of wq and the same columns of wo. Score = product of
the norms of those slices (per layer; the same fraction is removed in every layer). Removing a fraction r
of the channels removes r of the MLP's 3 d f weights and of its 2 x 3 d f forward FLOPs per token.

    llama-course compress CKPT --method prune --out runs/s50 --set sparsity=0.5 --set structured=true
"""

from __future__ import annotations

import torch
from torch import nn

from llama_course.core import quantization as quant
from llama_course.core.model import Attention, FeedForward


def prunable(model: nn.Module) -> dict:
    """{name: weight} of the matmul weights inside the transformer blocks."""
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("layers.")}


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer") -> dict:
    """{name: bool mask of the weights kept}: the round(s n) smallest |w| are dropped, per matrix or globally."""
    weights = prunable(model)
    if scope == "layer":
        return {n: _keep_largest(w.detach().abs().flatten(), sparsity).view_as(w) for n, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = _keep_largest(flat, sparsity)
    masks, start = {}, 0
    for n, w in weights.items():
        masks[n] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_drop = round(sparsity * scores.numel())
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_drop:
        keep[torch.topk(scores, n_drop, largest=False).indices] = False      # exact count, ties included
    return keep


def apply_masks(model: nn.Module, masks: dict) -> list:
    """Zero the pruned weights and keep them zero while training: each weight's gradient is masked (Adam
    then never moves a zero, whose moments stay zero). Returns the hook handles."""
    handles = []
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        with torch.no_grad():
            w.mul_(mask.to(w.dtype))
        keep = mask.to(w.dtype)
        handles.append(w.register_hook(lambda g, keep=keep: g * keep.to(g.device)))
    return handles


def block_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the blocks' matmul weights (what `sparsity=` targets)."""
    weights = list(prunable(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


# ---------------------------------------------------------------------------------------------
# structured pruning: whole heads and FFN channels
# ---------------------------------------------------------------------------------------------

def structured_plan(model: nn.Module, sparsity: float, prune_heads: bool = True) -> list:
    """Per layer, the indices kept: {"q_heads": [...], "kv_heads": [...], "channels": [...]}."""
    plan = []
    for layer in model.layers:
        att, ffn = layer.attention, layer.feed_forward
        hd, a, k = att.head_dim, att.n_heads, att.n_kv_heads
        r = a // k
        q_score = (att.wq.weight.detach().view(a, hd, -1).norm(dim=(1, 2))
                   * att.wo.weight.detach().view(-1, a, hd).norm(dim=(0, 2)))
        q_heads, kv_heads = list(range(a)), list(range(k))
        if prune_heads and r > 1:                           # GQA: the same number of query heads per group
            keep = max(1, round(r * (1 - sparsity)))
            q_heads = sorted(g * r + int(i) for g in range(k) for i in torch.topk(q_score[g * r:(g + 1) * r], keep).indices)
        elif prune_heads:                                   # one query head per k/v head: drop whole groups
            keep = max(1, round(k * (1 - sparsity)))
            q_heads = kv_heads = sorted(int(i) for i in torch.topk(q_score, keep).indices)
        f = ffn.w1.out_features
        c_score = ffn.w1.weight.detach().norm(dim=1) * ffn.w2.weight.detach().norm(dim=0)
        if ffn.w3 is not None:
            c_score = c_score * ffn.w3.weight.detach().norm(dim=1)
        channels = sorted(int(i) for i in torch.topk(c_score, max(1, round(f * (1 - sparsity)))).indices)
        plan.append({"q_heads": q_heads, "kv_heads": kv_heads, "channels": channels})
    return plan


def shrink(model: nn.Module, plan: list) -> list:
    """Replace each block's attention and MLP by smaller ones holding only the kept rows and columns.
    Returns the new per-layer shapes [{"n_heads", "n_kv_heads", "ffn_dim"}] (what a checkpoint records)."""
    cfg = model.cfg
    shapes = []
    for layer, keep in zip(model.layers, plan):
        att, ffn = layer.attention, layer.feed_forward
        hd = att.head_dim
        q_rows = torch.tensor([h * hd + i for h in keep["q_heads"] for i in range(hd)])
        kv_rows = torch.tensor([h * hd + i for h in keep["kv_heads"] for i in range(hd)])
        new_att = Attention(cfg, n_heads=len(keep["q_heads"]), n_kv_heads=len(keep["kv_heads"]))
        _copy_rows(new_att.wq, att.wq, q_rows)
        _copy_rows(new_att.wk, att.wk, kv_rows)
        _copy_rows(new_att.wv, att.wv, kv_rows)
        _copy_cols(new_att.wo, att.wo, q_rows)
        ch = torch.tensor(keep["channels"])
        new_ffn = FeedForward(cfg, ffn_dim=len(ch))
        _copy_rows(new_ffn.w1, ffn.w1, ch)
        if ffn.w3 is not None:
            _copy_rows(new_ffn.w3, ffn.w3, ch)
        _copy_cols(new_ffn.w2, ffn.w2, ch)
        layer.attention, layer.feed_forward = new_att, new_ffn
        shapes.append({"n_heads": new_att.n_heads, "n_kv_heads": new_att.n_kv_heads, "ffn_dim": len(ch)})
    return shapes


def structured_masks(model: nn.Module, plan: list) -> None:
    """The dense equivalent of `shrink`: zero the pruned heads' wo columns and channels' w2 columns in place.
    The pruned model computes exactly what this masked dense model computes (tests hold them equal)."""
    for layer, keep in zip(model.layers, plan):
        att, ffn = layer.attention, layer.feed_forward
        hd = att.head_dim
        with torch.no_grad():
            for h in set(range(att.n_heads)) - set(keep["q_heads"]):
                att.wo.weight[:, h * hd:(h + 1) * hd] = 0
            dropped = sorted(set(range(ffn.w1.out_features)) - set(keep["channels"]))
            ffn.w2.weight[:, dropped] = 0


def _copy_rows(dst: nn.Linear, src: nn.Linear, rows: torch.Tensor) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight[rows])
        if src.bias is not None:
            dst.bias.copy_(src.bias[rows])


def _copy_cols(dst: nn.Linear, src: nn.Linear, cols: torch.Tensor) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight[:, cols])
        if src.bias is not None:
            dst.bias.copy_(src.bias)


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token from the real module shapes: 2 per matmul weight, plus attention's
    QK^T and AV (4 s x query width per layer), as simulator.workload counts them for a dense model."""
    flops = 0.0
    for m in model.modules():
        if isinstance(m, (nn.Linear, quant.QuantLinear)):
            flops += 2.0 * m.in_features * m.out_features
    for layer in model.layers:
        flops += 4.0 * seq_len * layer.attention.n_heads * layer.attention.head_dim
    return flops
