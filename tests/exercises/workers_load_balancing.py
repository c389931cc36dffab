"""Runs on each gloo rank of the graded test of exercise 9.5 (tests/exercises/test_load_balancing.py)."""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import wire_summary

SHARES = {3: [(1, 2, 5), (0, 6, 2), (4, 4, 0)]}          # sequences per rank, for three global batches of 8


def check_weighted_gradient(rank: int, world: int, module_name: str) -> dict:
    """A linear model on a global batch of 8 sequences split unevenly: every rank's answer vs the gradient
    of the mean loss over all 8, computed here on the whole batch in one process."""
    import torch

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "load_balancing")
    out = {"errors": [], "wire": [], "error": ""}
    for case, shares in enumerate(SHARES[world]):
        g = torch.Generator().manual_seed(case)
        x, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
        w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        ((x @ w - y) ** 2).mean().backward()
        reference = w.grad.clone()
        lo = sum(shares[:rank])
        n = shares[rank]
        w.grad = None
        if n:
            ((x[lo:lo + n] @ w - y[lo:lo + n]) ** 2).mean().backward()
            local = w.grad.clone()
        else:
            local = torch.full((5,), float("nan"), dtype=torch.float64)
        try:
            with wire.recording() as log:
                got = exercise.weighted_gradient_all_reduce(local, n, 8)
            out["wire"].append(wire_summary(log))
        except NotImplementedError as e:
            out["error"] = f"NotImplementedError: {e}"
            return out
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"
            return out
        out["errors"].append(float((got - reference).abs().max()))
    return out
