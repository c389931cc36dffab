"""Runs on each gloo rank of the graded test of exercise 12.5 (tests/exercises/test_model_compression.py)."""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import wire_summary


def check_quantized_all_gather(rank: int, world: int, module_name: str) -> dict:
    """Every rank's shard is generated from its rank, so each process can build the exact full weight."""
    import torch

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "model_compression")
    rows, cols = 6, 40

    def shard(r):
        g = torch.Generator().manual_seed(r)
        w = torch.randn(rows, cols, generator=g) * (r + 1)
        w[0] *= 10                                          # one row with a much larger range
        return w

    exact = torch.cat([shard(r) for r in range(world)])
    out = {"error": ""}
    try:
        with wire.recording() as log:
            full, sent = exercise.quantized_all_gather(shard(rank))
    except NotImplementedError as e:
        out["error"] = f"NotImplementedError: {e}"
        return out
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    half_step = exact.abs().amax(dim=1, keepdim=True) / 127 / 2
    out.update(shape=tuple(full.shape), sent=int(sent), rows=rows, cols=cols, wire=wire_summary(log),
               within=bool(((full - exact).abs() <= half_step * (1 + 1e-5) + 1e-7).all()),
               max_rel=float(((full - exact).abs() / exact.abs().amax(dim=1, keepdim=True)).max()))
    return out
