"""Spawned workers for tests/test_bench.py (importable by name, as llama_course.core.testing.spawn needs)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist

from llama_course.commands import bench_processes


def burst_calls(rank: int, world: int, min_s: float) -> dict:
    """`bench_processes._burst` over an all-reduce on a clock that each call moves 5 ms on rank 0 and 6 ms on
    rank 1 (so the ranks' own first bursts would ask for different numbers of bursts): how many calls each rank
    made and the seconds per call it read."""
    calls, clock = [0], [0.0]
    x = torch.zeros(4)

    def fn():
        dist.all_reduce(x)             # a collective: ranks that disagree on the count would hang
        clock[0] += 0.006 if rank == 1 else 0.005
        calls[0] += 1

    real = bench_processes.time
    bench_processes.time = SimpleNamespace(perf_counter=lambda: clock[0])
    try:
        per_call = bench_processes._burst(fn, 2, 4, min_s)
    finally:
        bench_processes.time = real
    return {"calls": calls[0], "per_call": per_call}
