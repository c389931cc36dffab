"""Runs on each gloo rank of the graded test of exercise 11.4 (tests/exercises/test_communication_compression.py)."""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import wire_summary

NUMEL, K, STEPS = 50, 5, 3


def local_grad(step: int, rank: int):
    import torch

    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(7 * step + 1000 * rank), dtype=torch.float64)


def check_topk_all_reduce(rank: int, world: int, module_name: str) -> dict:
    import torch

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "communication_compression")
    residual = torch.zeros(NUMEL, dtype=torch.float64)
    out = {"averages": [], "residuals": [], "wire": [], "error": ""}
    try:
        for step in range(STEPS):
            with wire.recording() as log:
                average = exercise.topk_all_reduce(local_grad(step, rank), residual, K)
            out["averages"].append(average.clone())
            out["residuals"].append(residual.clone())
            out["wire"].append(wire_summary(log))
    except Exception as e:  # noqa: BLE001 - the test reports it
        out["error"] = f"{type(e).__name__}: {e}"
    return out
