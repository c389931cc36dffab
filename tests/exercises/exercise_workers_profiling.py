"""Runs on each gloo rank of the graded test of exercise 14.6 (tests/exercises/test_profiling.py)."""

from __future__ import annotations

import copy
import importlib

from guard import guarded

ORIGINS = {0: 1000.250, 1: 1000.000, 2: 1000.100}          # rank 1 started first (wall-clock seconds)


def rank_events(rank: int) -> list:
    """What rank `rank` recorded, on its own clock (microseconds since its start)."""
    return [{"name": "forward", "ph": "X", "pid": 99, "tid": "compute", "ts": 0.0, "dur": 1000.0 * (rank + 1)},
            {"name": "all_reduce", "ph": "X", "pid": 99, "tid": "comm", "ts": 5000.0, "dur": 300.0}]


def check_merge(rank: int, world: int, module_name: str) -> dict:
    exercise = guarded(importlib.import_module(module_name), "profiling")
    mine = rank_events(rank)
    before = copy.deepcopy(mine)
    try:
        merged = exercise.merge_rank_traces(mine, ORIGINS[rank])
        return {"merged": merged, "unchanged": mine == before, "error": ""}
    except Exception as e:  # noqa: BLE001 - the test reports it
        return {"merged": None, "unchanged": True, "error": f"{type(e).__name__}: {e}"}
