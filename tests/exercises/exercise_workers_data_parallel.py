"""Runs on each gloo rank of the graded test of exercise 3.4 (tests/exercises/test_data_parallel.py)."""

from __future__ import annotations

import importlib

NUMEL, STEPS, LR, MOMENTUM = 13, 3, 0.1, 0.9


def local_grad(step: int, rank: int):
    """The gradient rank `rank` computes at `step` (the test rebuilds them for its single-process oracle)."""
    import torch

    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(100 * step + rank), dtype=torch.float64)


def initial_param():
    import torch

    return torch.linspace(-1, 1, NUMEL, dtype=torch.float64)


def check_zero2(rank: int, world: int, module_name: str) -> dict:
    """Run STEPS ZeRO-2 steps; return params after each step and the final momentum shard (or the error)."""
    import torch

    exercise = importlib.import_module(module_name)
    param = initial_param()
    shard = torch.zeros_like(torch.tensor_split(param, world)[rank])
    out = {"params": [], "momentum": None, "error": ""}
    try:
        for step in range(STEPS):
            exercise.zero2_sgd_step(param, local_grad(step, rank), shard, LR, MOMENTUM)
            out["params"].append(param.clone())
        out["momentum"] = shard.clone()
    except Exception as e:  # noqa: BLE001 - the test reports it
        out["error"] = f"{type(e).__name__}: {e}"
    return out
