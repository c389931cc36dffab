"""Load balancing: dynamic_batch's update is exactly the global-batch mean under a straggler (against the
one-process run), backup_workers drops the late gradient, local SGD / DiLoCo train; data skew. One launch
of 4 ranks runs all the distributed checks (sync_async's local SGD included)."""

from __future__ import annotations

import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from llama_course.coordination.load_balancing import (
    LoadBalancedPlan,
    padded_tokens,
    shard_documents,
    skew_report,
)
from llama_course.core.engine_protocol import BatchPlan
from llama_course.core.profiling import Tracer

sys.path.insert(0, os.path.dirname(__file__))

TINY = {"model": {"preset": "tiny"}, "seq_len": 32,
        "training": {"precision": "fp32", "steps": 3, "warmup_steps": 1, "eval_batches": 1},
        "parallel": {"global_batch_size": 8, "micro_batch_size": 2, "implementation": "course"}}
# (load balancing and local SGD are the course's engines: the capability table refuses implementation torch)


def test_bucketed_sharding_balances_tokens():
    lengths = [500, 20, 30, 480, 25, 510, 15, 490, 40, 35, 470, 10]
    naive = [sum(lengths[d] for d in p) for p in shard_documents(lengths, 4, "naive")]
    bucketed = [sum(lengths[d] for d in p) for p in shard_documents(lengths, 4, "bucketed")]
    assert sum(naive) == sum(bucketed) == sum(lengths)
    assert max(bucketed) - min(bucketed) < max(naive) - min(naive)
    assert padded_tokens(lengths, [0, 1], 2) == 1000            # padded to the longest of the pair


class _Engine:
    """What BatchPlan.stretch reads of an engine: its straggler factor, its device and its tracer."""

    def __init__(self, factor: float):
        self.slow_factor, self.tracer = factor, Tracer(enabled=True)
        self.ctx = SimpleNamespace(device=torch.device("cpu"))


@pytest.mark.parametrize("policy", ["none", "backup_workers"])
def test_a_stragglers_injected_delay_is_traced_as_compute(policy):
    """faults.slow sleeps (factor - 1) x the compute it follows; the sleep stands in for compute, so the trace
    (and `compare`'s measured compute) holds it as a compute span, not as untraced time."""
    plan = BatchPlan() if policy == "none" else LoadBalancedPlan.__new__(LoadBalancedPlan)
    if policy != "none":
        plan.policy, plan.store, plan.key, plan.step_index, plan.used = policy, _Store(), "k", 0, 2
    engine = _Engine(3.0)
    plan.stretch(engine, 0.01)
    (span,) = engine.tracer.events
    assert (span["name"], span["tid"]) == ("straggle", "compute") and span["dur"] >= 0.02e6
    quick = _Engine(1.0)
    plan.stretch(quick, 0.01)
    assert quick.tracer.events == []


class _Store:
    def add(self, key, n):
        return 0


def test_skew_report_orders_the_methods():
    rep = skew_report([5, 300, 7, 280, 9, 260, 11, 240] * 4, dp=4, micro_batch=2)
    assert rep["packed"]["imbalance"] <= rep["bucketed"]["imbalance"] < rep["naive"]["imbalance"]
    assert rep["packed"]["imbalance"] == pytest.approx(1.0, abs=0.01)


def test_policies_on_four_ranks():
    import workers_parameter_server as w

    from llama_course.core.testing import spawn
    from llama_course.trainer import run_worker
    from simulator.config import load_config

    dp4 = {**TINY, "cluster": {"num_gpus": 4}}
    runs = [["load_balance.policy=dynamic_batch", "faults.slow={3: 3}"],
            ["load_balance.policy=backup_workers", "faults.slow={3: 4}"],
            ["parallel.sync=local_sgd", "parallel.local_steps=2", "parallel.outer_lr=0.7",
             "parallel.outer_momentum=0.9"]]
    out = spawn(w.run_configs, 4, [dp4] * len(runs), runs, timeout=150)[0]
    dynamic, backup, diloco = out
    oracle = run_worker(load_config(TINY, ["cluster.num_gpus=1"]), quiet=True)
    for got, want in zip(dynamic, oracle):          # the update is the global-batch mean, whatever the shares
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    assert len(backup) == 3 and all(math.isfinite(r["loss"]) for r in backup)
    assert any(abs(b["loss"] - o["loss"]) > 1e-6 for b, o in zip(backup[1:], oracle[1:]))   # a gradient was dropped
    assert len(diloco) == 3 and diloco[-1]["loss"] < diloco[0]["loss"]
