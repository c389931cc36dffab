"""The shared spec (simulator/spec.py) against the runtime it describes: the model's parameter tensors, the
tensor-parallel shards, the pipeline stages, the rank grid, the gradient bucket plan."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_course.core.model import Transformer
from llama_course.parallel.pipeline_parallel import StageModule
from simulator import spec
from simulator.config import load_config

SHAPES = [{}, {"tie_embeddings": True}, {"arch": "gpt"}, {"arch": "gpt", "tie_embeddings": False},
          {"n_kv_heads": 4}, {"n_layers": 3, "ffn_dim": 96},
          {"n_experts": 4}, {"n_experts": 3, "experts_per_token": 1, "arch": "gpt"}]      # mixture of experts


def model_cfg(**kw):
    return dataclasses.replace(load_config(None).model, **kw)


@pytest.mark.parametrize("kw", SHAPES)
def test_parameters_are_the_modules_named_parameters(kw):
    cfg = model_cfg(**kw)
    model = Transformer(cfg, max_seq_len=32)
    real = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert spec.parameters(cfg, 32) == real
    assert spec.tensors_per_block(cfg) == len([n for n, _ in real if n.startswith("layers.0.")])


@pytest.mark.parametrize("replicas, tp, pp, ep", [(2, 1, 1, 2), (4, 1, 1, 2), (4, 2, 1, 2), (4, 1, 2, 4), (8, 1, 1, 2)])
def test_ep_groups_are_consecutive_replicas_and_edp_groups_stride_ep(replicas, tp, pp, ep):
    """Every training rank in exactly one ep group and one expert data-parallel group; an ep group is ep
    consecutive replicas (dp coordinates), an edp group the replicas of one ep rank (stride ep)."""
    world = replicas * tp * pp
    for groups, size in ((spec.ep_groups(replicas, tp, pp, ep), ep),
                         (spec.ep_groups(replicas, tp, pp, ep, expert_data=True), replicas // ep)):
        assert sorted(r for g in groups for r in g) == list(range(world))
        assert all(len(g) == size for g in groups)
    for g in spec.ep_groups(replicas, tp, pp, ep):
        coords = [spec.coords(r, replicas, tp, pp) for r in g]
        assert len({(p, t) for p, _, t in coords}) == 1
        assert [d % ep for _, d, _ in coords] == list(range(ep)) and coords[0][1] % ep == 0
    for g in spec.ep_groups(replicas, tp, pp, ep, expert_data=True):
        coords = [spec.coords(r, replicas, tp, pp) for r in g]
        assert len({(p, d % ep, t) for p, d, t in coords}) == 1
    assert spec.ep_groups(4, 1, 1, 2) == [[0, 1], [2, 3]]
    assert spec.ep_groups(4, 1, 1, 2, expert_data=True) == [[0, 2], [1, 3]]


def test_tensors_per_block_is_not_nine_for_gpt():
    assert spec.tensors_per_block(model_cfg()) == 9
    assert spec.tensors_per_block(model_cfg(arch="gpt")) == 16       # biases and LayerNorm biases


@pytest.mark.parametrize("kw", SHAPES[:4])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_shapes_are_the_runtime_split(kw, tp):
    """Tensor parallelism keeps chunk r of dim shard_dim(name) of every split tensor (tensor_parallel.py)."""
    cfg = model_cfg(n_heads=4, n_kv_heads=4, **kw)
    model = Transformer(cfg, max_seq_len=32)
    for name, p in model.named_parameters():
        dim = spec.shard_dim(name)
        for r in range(tp):
            local = p if dim is None else p.chunk(tp, dim)[r]
            assert spec.shard_shape(name, tuple(p.shape), tp) == tuple(local.shape), name


@pytest.mark.parametrize("kw", [{}, {"arch": "gpt", "tie_embeddings": False}])
def test_stage_parameters_are_the_pipeline_stages(kw):
    cfg = model_cfg(n_layers=5, **kw)
    model = Transformer(cfg, max_seq_len=32)
    cuts = [[0, 1], [2], [3, 4]]
    for k, ids in enumerate(cuts):
        first, last = k == 0, k == len(cuts) - 1
        stage = StageModule(model, ids, first, last)
        real = [(n, tuple(p.shape)) for n, p in stage.named_parameters()]
        assert spec.stage_parameters(cfg, 32, ids, first, last) == real
        assert spec.stage_tensor_numels(cfg, 32, len(ids), first, last) == [p.numel() for _, p in
                                                                             stage.named_parameters()]


@pytest.mark.parametrize("tp", [1, 2])
def test_stage_tensor_numels_of_a_tied_whole_model(tp):
    cfg = model_cfg(tie_embeddings=True)
    whole = spec.stage_parameters(cfg, 32, range(cfg.n_layers), True, True, tp)
    assert spec.stage_tensor_numels(cfg, 32, cfg.n_layers, True, True, tp) == [spec.numel(s) for _, s in whole]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_grid_coordinates_and_groups(dp, tp, pp):
    world = dp * tp * pp
    for rank in range(world):
        p, d, t = spec.coords(rank, dp, tp, pp)
        assert spec.rank_of(p, d, t, dp, tp) == rank
        for kind in spec.GROUP_KINDS:
            assert rank in spec.group_of(kind, rank, dp, tp, pp)
            assert spec.group_of(kind, rank, dp, tp, pp) in spec.groups(kind, dp, tp, pp)
    for kind, size in (("dp", dp), ("tp", tp), ("pp", pp)):
        gs = spec.groups(kind, dp, tp, pp)
        assert sorted(r for g in gs for r in g) == list(range(world))       # a partition of the ranks
        assert all(len(g) == size for g in gs)
    assert spec.group_of("tp", 0, dp, tp, pp) == list(range(tp))           # tp fastest: neighbours


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5 * 2 ** 20), min_size=1, max_size=30), st.sampled_from([0, 0.5, 1, 2, 25]))
def test_bucket_plan(sizes, bucket_mb):
    plan = spec.bucket_plan(sizes, bucket_mb)
    assert [i for b in plan for i in b] == list(range(len(sizes)))          # every tensor once, in order
    cap = bucket_mb * spec.BUCKET_UNIT_BYTES
    for k, bucket in enumerate(plan):
        limit = min(cap, spec.FIRST_BUCKET_BYTES) if k == 0 else cap
        total = sum(sizes[i] for i in bucket)
        if bucket_mb == 0:
            assert len(bucket) == 1
            continue
        assert len(bucket) == 1 or total <= limit                          # over the cap only alone
        if k + 1 < len(plan):                                              # closed because the next did not fit
            assert total + sizes[plan[k + 1][0]] > limit


def test_gradient_sync_event_names_the_collective():
    assert [spec.gradient_sync_event(z) for z in range(4)] == ["all_reduce", "all_reduce", "reduce_scatter",
                                                               "reduce_scatter"]
