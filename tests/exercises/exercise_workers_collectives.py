"""Runs on each gloo rank of the graded test of exercise 2.6 (tests/exercises/test_collectives.py).

Importable by name so `llama_course.core.testing.spawn` can start it; loads the exercise module named by the
test (labs.exercises.collectives or solutions.collectives) under the leak guard, checks it against
torch.distributed and records what it put on the wire (llama_course.core.wire).
"""

from __future__ import annotations

import importlib

from guard import guarded
from recorders import strict_worker, wire_summary


def check_ring_all_reduce_p2p(rank: int, world: int, module_name: str) -> list:
    """For several sizes and dtypes: (numel, max |error| vs dist.all_reduce, elements sent, error text,
    element bytes, the wire summary of the call)."""
    import torch
    import torch.distributed as dist

    from llama_course.core import wire

    wire.install()
    strict_worker(wire)                            # NCCL's rules: batched point-to-point, matched in order
    exercise = guarded(importlib.import_module(module_name), "collectives")
    blocked = ("all_reduce", "reduce_scatter", "reduce_scatter_tensor", "all_gather", "all_gather_into_tensor",
               "broadcast", "reduce", "all_to_all", "all_to_all_single")
    saved = {name: getattr(dist, name) for name in blocked}
    rows = []
    for numel, dtype, shape in ((12, torch.float64, (3, 4)), (7, torch.float64, (7,)), (1, torch.float32, (1,)),
                                (1000, torch.float32, (10, 100)), (4096 * 3, torch.float32, (4096 * 3,)),
                                (15, torch.float64, "transposed")):
        g = torch.Generator().manual_seed(1000 * rank + numel)
        if shape == "transposed":                          # a non-contiguous view: the result lands in it
            x = torch.randn(5, 3, generator=g, dtype=dtype).t()
        else:
            x = torch.randn(shape, generator=g, dtype=dtype)
        expected = x.clone()
        dist.all_reduce(expected)
        error = ""
        for name in blocked:
            setattr(dist, name, _forbidden(name))
        try:
            with wire.recording() as log:
                sent = exercise.ring_all_reduce_p2p(x)
        except NotImplementedError as e:
            sent, error = None, f"NotImplementedError: {e}"
        except Exception as e:  # noqa: BLE001 - report it to the test, which fails (LeakError included)
            sent, error = None, f"{type(e).__name__}: {e}"
        finally:
            for name, fn in saved.items():
                setattr(dist, name, fn)
        if error:
            rows.append((numel, None, None, error, None, None))
            break
        rows.append((numel, float((x - expected).abs().max()), sent, "", x.element_size(), wire_summary(log)))
        dist.barrier()
    return rows


def _forbidden(name):
    def call(*args, **kwargs):
        raise RuntimeError(f"exercise 2.6 may use send/recv only, not dist.{name}")
    return call


def check_ring_on_groups(rank: int, world: int, module_name: str) -> dict:
    """The same ring on process groups: ranks 0 and 2 of 3 (group ranks are not global ranks), and a group
    of one rank (nothing to send)."""
    import torch
    import torch.distributed as dist

    from llama_course.core import wire

    wire.install()
    strict_worker(wire)                            # NCCL's rules: batched point-to-point, matched in order
    exercise = guarded(importlib.import_module(module_name), "collectives")
    pair = dist.new_group([0, 2])
    singles = [dist.new_group([r]) for r in range(world)]
    out = {"error": ""}
    try:
        x = torch.arange(10, dtype=torch.float64) * (rank + 1)
        if rank in (0, 2):
            with wire.recording() as log:
                out["pair_sent"] = exercise.ring_all_reduce_p2p(x, group=pair)
            out["pair"], out["pair_wire"] = x.clone(), wire_summary(log)
        y = torch.arange(4, dtype=torch.float64) + rank
        with wire.recording() as log:
            out["single_sent"] = exercise.ring_all_reduce_p2p(y, group=singles[rank])
        out["single"], out["single_wire"] = y.clone(), wire_summary(log)
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    dist.barrier()
    return out
