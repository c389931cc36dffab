"""Spawned workers for tests/test_bench.py (importable by name, as llama_course.core.testing.spawn needs)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from llama_course.commands.bench_processes import _burst


def burst_calls(rank: int, world: int, min_s: float) -> dict:
    """`_burst` over an all-reduce after which rank 1 sleeps five milliseconds (so rank 0's bursts end sooner
    than rank 1's): how many calls each rank made and the seconds per call it read."""
    calls = [0]
    x = torch.zeros(4)

    def fn():
        dist.all_reduce(x)             # a collective: ranks that disagree on the count would hang
        if rank == 1:
            time.sleep(0.005)
        calls[0] += 1

    per_call = _burst(fn, 2, 4, min_s)
    return {"calls": calls[0], "per_call": per_call}
