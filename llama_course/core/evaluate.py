"""Held-out loss of a model: the mean next-token cross-entropy over the validation split of its config's
corpus (whole documents the run never trained on). The `eval` command (commands/eval.py) wraps it."""

from __future__ import annotations

import torch

from llama_course.core.data import load_tokens, pack, val_batches
from llama_course.core.model import cross_entropy


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
    return held_out_loss(model, cfg, batches, batch_size)["val_loss"]


@torch.no_grad()
def held_out_loss(model, cfg, batches: int | None = None, batch_size: int = 8) -> dict:
    """{"val_loss", "val_batches", "val_sequences", "val_tokens"}: the mean next-token loss over the first
    `batches` batches of the validation split (default: all of it, the last batch possibly shorter), and how
    much held-out text that was. `llama-course eval` and the demo report this number."""
    data = load_tokens(cfg)
    seqs = pack(data.val, cfg.seq_len)
    n = batches or max(1, -(-len(seqs) // batch_size))
    model.eval()
    chunks = val_batches(seqs, batch_size, n)
    tokens = [y.numel() for _, y in chunks]
    losses = [float(cross_entropy(model(x), y)) for x, y in chunks]
    return {"val_loss": sum(loss * t for loss, t in zip(losses, tokens)) / sum(tokens), "val_batches": len(chunks),
            "val_sequences": sum(len(y) for _, y in chunks), "val_tokens": sum(tokens)}
