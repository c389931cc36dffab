"""Balanced stages: the partition is optimal (brute force, hypothesis) and beats the equal split when the
head is heavy."""

import itertools
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402

from llama_course.parallel.balanced_stages import (  # noqa: E402
    balance_report,
    naive_partition,
    partition_stages,
    stage_cost,
    stage_layers,
)
from simulator.config import load_config  # noqa: E402


def brute_force(costs, p):
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), p - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=9), st.integers(1, 9))
def test_partition_is_optimal_and_contiguous(costs, p):
    if p > len(costs):
        with pytest.raises(ValueError):
            partition_stages(costs, p)
        return
    sizes = partition_stages(costs, p)
    assert len(sizes) == p and all(s >= 1 for s in sizes) and sum(sizes) == len(costs)
    assert max(stage_cost(costs, sizes)) == brute_force(costs, p)
    assert max(stage_cost(costs, sizes)) <= max(stage_cost(costs, naive_partition(len(costs), p)))


def test_balanced_stages_beat_the_equal_split_when_the_head_is_heavy():
    """12 layers of h = 64 and a head over 2048 tokens (about 3.4 layers of FLOPs) on 4 stages."""
    cfg = workers.make_config({"model.n_layers": 12, "model.vocab_size": 2048, "parallel.pp": 4,
                               "cluster.num_gpus": 4})
    report = balance_report(cfg)
    assert report["naive"] == [3, 3, 3, 3]
    assert report["balanced"][-1] == 1 and sorted(report["balanced"]) == [1, 3, 4, 4]   # head stage: 1 layer
    assert report["speedup"] > 1.4


def test_stage_layers_follow_the_policy():
    naive = workers.make_config({"model.n_layers": 12, "model.vocab_size": 2048, "parallel.pp": 4,
                                 "cluster.num_gpus": 4})
    assert [len(s) for s in stage_layers(naive)] == [3, 3, 3, 3]
    balanced = workers.make_config({"model.n_layers": 12, "model.vocab_size": 2048, "parallel.pp": 4,
                                    "cluster.num_gpus": 4, "load_balance.policy": "balanced_stages"})
    layers = stage_layers(balanced)
    assert sum(layers, []) == list(range(12)) and len(layers[-1]) == 1


def test_measured_costs_see_the_heavy_head():
    """Measured per-layer seconds have the same shape as the FLOP costs: a big vocabulary loads the last."""
    import torch

    from llama_course.core.model import build_model
    from llama_course.parallel.balanced_stages import measure_layer_costs

    # the head is ~40x a block's FLOPs, so the 2x below holds even on a loaded machine (best of 5 repeats)
    cfg = workers.make_config({"model.n_layers": 3, "model.vocab_size": 32768, "model.dim": 32, "model.n_heads": 2,
                               "model.n_kv_heads": 2, "model.ffn_dim": 64})
    model = build_model(cfg)
    costs = measure_layer_costs(model, torch.randint(0, 32768, (2, 16)), repeats=5)
    assert len(costs) == 3 and all(c > 0 for c in costs)
    assert costs[-1] > 2 * costs[1]
    assert all(p.grad is None for p in model.parameters())


def test_the_runtime_takes_the_simulators_uneven_stages():
    """parallel.first/last_stage_layers reach the runtime's stages (the split simulator.pipeline_parallel
    prices), instead of an even split that ignored them."""
    cfg = load_config("configs/tiny.yaml", ["parallel.pp=2", "parallel.dp=1", "cluster.num_gpus=null",
                                            "model.n_layers=6", "parallel.first_stage_layers=1"])
    assert stage_layers(cfg) == [[0], [1, 2, 3, 4, 5]]
    cfg = load_config("configs/tiny.yaml", ["parallel.pp=2", "parallel.dp=1", "cluster.num_gpus=null",
                                            "parallel.vpp=2", "parallel.schedule=interleaved_1f1b",
                                            "model.n_layers=6", "parallel.last_stage_layers=2"])
    assert [len(s) for s in stage_layers(cfg)] == [2, 1, 2, 1] and sum(stage_layers(cfg), []) == list(range(6))
