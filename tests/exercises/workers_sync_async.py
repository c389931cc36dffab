"""Runs on each gloo rank of the graded test of exercise 8.5 (tests/exercises/test_sync_async.py)."""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import wire_summary


def check_diloco_outer_step(rank: int, world: int, module_name: str, rounds: int = 3) -> dict:
    """Three outer rounds of DiLoCo on replicas that drift apart; every rank recomputes the reference
    from all replicas' weights (which it can generate: they are a function of rank and round)."""
    import torch

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "sync_async")
    eta, mu, n = 0.7, 0.9, 257
    anchor = torch.linspace(-1, 1, n, dtype=torch.float64)
    buffer = torch.zeros(n, dtype=torch.float64)
    ref_anchor, ref_buffer = anchor.clone(), buffer.clone()
    out = {"params": [], "anchor": [], "reference": [], "buffer_error": [], "wire": [], "n": n, "error": ""}

    def local(r, t, x):          # replica r after its local steps of round t
        g = torch.Generator().manual_seed(100 * t + r)
        return x - 0.1 * (r + 1) * torch.randn(n, generator=g, dtype=torch.float64)

    for t in range(rounds):
        params = local(rank, t, anchor)
        try:
            with wire.recording() as log:
                exercise.diloco_outer_step(params, anchor, buffer, eta, mu)
            out["wire"].append(wire_summary(log))
        except NotImplementedError as e:
            out["error"] = f"NotImplementedError: {e}"
            break
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"
            break
        mean = sum(local(r, t, ref_anchor) for r in range(world)) / world
        delta = ref_anchor - mean
        ref_buffer = mu * ref_buffer + delta
        ref_anchor = ref_anchor - eta * (delta + mu * ref_buffer)
        out["params"].append(params.clone())
        out["anchor"].append(anchor.clone())
        out["reference"].append(ref_anchor.clone())
        out["buffer_error"].append(float((buffer - ref_buffer).abs().max()))
    return out
