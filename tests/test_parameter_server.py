"""Parameter server: shard assignment, heartbeats, lock-free cost, and one launch of 2 workers + 2 servers
whose BSP losses match the single-process run (the all-reduce data-parallel oracle: DESIGN.md)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_course.parameter_server import HeartbeatMonitor, lock_free_cost
from simulator.parameter_server import assign_shards, shard_loads

sys.path.insert(0, os.path.dirname(__file__))

TINY = {"model": {"preset": "tiny"}, "seq_len": 32, "training": {"precision": "fp32", "steps": 3, "warmup_steps": 1,
                                                                  "eval_batches": 1},
        "parallel": {"global_batch_size": 4, "micro_batch_size": 1}}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40), st.integers(1, 8))
def test_assign_shards_is_balanced(sizes, k):
    owner = assign_shards(sizes, k)
    assert len(owner) == len(sizes) and all(0 <= j < k for j in owner)
    loads = shard_loads(sizes, owner, k)
    assert sum(loads) == sum(sizes)
    assert max(loads) <= sum(sizes) / k + max(sizes)           # Graham's bound for greedy list scheduling
    assert max(loads) <= 4 / 3 * max(sum(sizes) / k, max(sizes)) + 1e-9


def test_assign_shards_largest_first():
    assert assign_shards([1, 5, 3, 3], 2) == [0, 0, 1, 1]      # 5 | 3, 3 | then 1 to the lighter (5 < 6)
    with pytest.raises(ValueError):
        assign_shards([1], 0)


def test_heartbeat_monitor_declares_silent_workers_dead():
    now = [0.0]
    mon = HeartbeatMonitor(range(3), timeout=5.0, clock=lambda: now[0])
    now[0] = 4.0
    mon.beat(0)
    mon.finish(2)                        # said goodbye: never dead
    assert mon.newly_dead() == []
    now[0] = 6.0
    assert mon.newly_dead() == [1]       # silent for 6 s > 5 s
    assert mon.newly_dead() == []        # declared once
    now[0] = 9.5
    assert mon.newly_dead() == [0]


def test_lock_free_cost_measures_torn_snapshots():
    cost = lock_free_cost(threads=2, updates=30, size=1 << 16)
    assert cost["lock"]["lost_updates"] == 0 and cost["lock"]["torn_snapshots"] == 0
    assert cost["lock_free"]["lost_updates"] >= 0


def _oracle():
    from llama_course.trainer import run_worker
    from simulator.config import load_config

    return run_worker(load_config(TINY, ["parallel.dp=1"]), quiet=True)


def test_bsp_parameter_server_matches_data_parallel():
    """2 workers + 2 servers in BSP (mean, AdamW, clipping across shards) = the one-process run; then an
    ASP run of the same processes records staleness."""
    import workers_parameter_server as w

    from llama_course.testing import spawn

    ps = {**TINY, "parallel": {**TINY["parallel"], "strategy": "parameter_server", "dp": 2, "num_servers": 2}}
    runs = spawn(w.run_configs, 4, [ps, ps], [[], ["parallel.sync=asp", "faults.slow={0: 3}"]], timeout=150)
    bsp, asp = runs[0][0], runs[0][1]
    assert runs[2] == [[], []] and runs[3] == [[], []]          # servers log nothing
    oracle = _oracle()
    for got, want in zip(bsp, oracle):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    assert len(asp) == 3 and all("staleness" in r for r in asp)
    assert all(r["staleness"] >= 0 for r in asp)
