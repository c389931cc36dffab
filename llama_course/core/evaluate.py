"""Held-out loss of a model: the mean next-token cross-entropy over the validation split of its config's
corpus (whole documents the run never trained on). The `eval` command (commands/eval.py) wraps it."""

from __future__ import annotations

import torch


def tensor_bytes(state: dict) -> int:
    """Bytes of the distinct tensors of a state dict (shared storage counted once)."""
    seen, total = set(), 0
    for t in state.values():
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.numel() * t.element_size()
    return total


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero entries over all weight matrices."""
    zeros = total = 0
    for p in model.parameters():
        if p.dim() >= 2:
            zeros += int((p == 0).sum())
            total += p.numel()
    return zeros / max(total, 1)


@torch.no_grad()
def evaluate_model(model, cfg, batches: int | None = None, batch_size: int = 8) -> float:
    """Mean held-out loss of a model on its config's corpus (all of the validation split by default)."""
    from llama_course.core.data import load_tokens, pack, val_batches
    from llama_course.core.model import cross_entropy

    data = load_tokens(cfg)
    seqs = pack(data.val, cfg.seq_len)
    n = batches or max(1, len(seqs) // batch_size)
    model.eval()
    losses = [float(cross_entropy(model(x), y)) for x, y in val_batches(seqs, batch_size, n)]
    return sum(losses) / len(losses)
