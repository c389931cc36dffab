"""Runs on each gloo rank of the graded test of exercise 7.5 (tests/exercises/test_parameter_server.py).

Importable by name so `llama_course.core.testing.spawn` can start it; loads the exercise module named by the
test and checks `ps_sgd_round` against SGD on the mean gradient computed here, in every process.
"""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import strict_worker, wire_summary

BLOCKED = ("all_reduce", "reduce_scatter", "reduce_scatter_tensor", "all_gather", "all_gather_into_tensor",
           "broadcast", "reduce", "all_to_all", "all_to_all_single", "gather", "scatter")


def _grad(rank: int, step: int, w):
    """Worker `rank`'s gradient at step `step`: of 0.5 |w - target_rank|^2, plus a step-dependent offset."""
    import torch

    target = torch.linspace(-1.0, 1.0, w.numel(), dtype=w.dtype).view_as(w) * rank
    return (w - target) + 0.01 * step


def check_ps_sgd_round(rank: int, world: int, module_name: str, server: int = 0, rounds: int = 4) -> dict:
    """{'weights': [w after each round], 'reference': [...], 'error': text or ''}."""
    import torch
    import torch.distributed as dist

    from llama_course.core import wire

    wire.install()
    strict_worker(wire)                            # NCCL's rules: batched point-to-point, matched in order
    exercise = guarded(importlib.import_module(module_name), "parameter_server")
    saved = {name: getattr(dist, name) for name in BLOCKED}
    lr = 0.3
    w = torch.full((3, 5), 0.5, dtype=torch.float64)
    ref = w.clone()
    out = {"weights": [], "reference": [], "wire": [], "error": ""}
    workers = [r for r in range(world) if r != server]
    for step in range(rounds):
        grad = _grad(rank, step, w) if rank != server else torch.full_like(w, float("nan"))
        for name in BLOCKED:
            setattr(dist, name, _forbidden(name))
        try:
            with wire.recording() as log:
                w = exercise.ps_sgd_round(w, grad, lr, server=server)
            out["wire"].append(wire_summary(log))
        except NotImplementedError as e:
            out["error"] = f"NotImplementedError: {e}"
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails
            out["error"] = f"{type(e).__name__}: {e}"
        finally:
            for name, fn in saved.items():
                setattr(dist, name, fn)
        if out["error"]:
            break
        mean = sum(_grad(r, step, ref) for r in workers) / len(workers)
        ref = ref - lr * mean
        out["weights"].append(w.clone())
        out["reference"].append(ref.clone())
        dist.barrier()
    return out


def _forbidden(name):
    def call(*args, **kwargs):
        raise RuntimeError(f"exercise 7.5 may use send/recv only, not dist.{name}")
    return call


def check_ps_on_a_group(rank: int, world: int, module_name: str) -> dict:
    """One round on the group {0, 2} whose server is group rank 1 (global rank 2): global rank 0 is the only
    worker; rank 1 stays out. Group ranks are not global ranks: send/recv need the translation."""
    import torch
    import torch.distributed as dist

    from llama_course.core import wire

    wire.install()
    strict_worker(wire)                            # NCCL's rules: batched point-to-point, matched in order
    exercise = guarded(importlib.import_module(module_name), "parameter_server")
    group = dist.new_group([0, 2])
    out = {"error": "", "weights": None}
    w = torch.full((4,), 2.0, dtype=torch.float64)
    if rank in (0, 2):
        grad = torch.arange(4, dtype=torch.float64) if rank == 0 else torch.full_like(w, float("nan"))
        try:
            out["weights"] = exercise.ps_sgd_round(w, grad, 0.5, server=1, group=group)
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"
    dist.barrier()
    return out
