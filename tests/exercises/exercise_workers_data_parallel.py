"""Runs on each gloo rank of the graded test of exercise 3.4 (tests/exercises/test_data_parallel.py)."""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import wire_summary

NUMEL, STEPS, LR, MOMENTUM = 14, 3, 0.1, 0.9


def local_grad(step: int, rank: int):
    """The gradient rank `rank` computes at `step` (the test rebuilds them for its single-process oracle)."""
    import torch

    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(100 * step + rank), dtype=torch.float64)


def initial_param():
    import torch

    return torch.linspace(-1, 1, NUMEL, dtype=torch.float64)


def check_zero2(rank: int, world: int, module_name: str) -> dict:
    """Run STEPS ZeRO-2 steps; return params after each step, the final momentum shard and each step's wire
    summary (or the error)."""
    import torch

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "data_parallel")
    param = initial_param()
    shard = torch.zeros_like(torch.tensor_split(param, world)[rank])
    out = {"params": [], "momentum": None, "wire": [], "error": ""}
    try:
        for step in range(STEPS):
            with wire.recording() as log:
                exercise.zero2_sgd_step(param, local_grad(step, rank), shard, LR, MOMENTUM)
            out["params"].append(param.clone())
            out["wire"].append(wire_summary(log))
        out["momentum"] = shard.clone()
    except Exception as e:  # noqa: BLE001 - the test reports it
        out["error"] = f"{type(e).__name__}: {e}"
    return out
