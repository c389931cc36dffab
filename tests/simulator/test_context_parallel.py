"""Context parallelism in the simulator: the sequence split over cp ranks, K and V all-gathered per block.

Held to closed forms: the per-rank FLOPs are 1/cp of the whole block's, the collectives are one all-gather
(forward) and one reduce-scatter (backward) of the whole sequence's K and V, the activations are those of
s/cp tokens plus the gathered K and V, the gradient reduction runs over dp x cp replicas, and the rank grid
puts the cp ranks next to the tensor-parallel ones (spec.py, which the runtime reads too).
"""

import pytest

from simulator import spec
from simulator.collectives import CommModel
from simulator.config import ConfigError, load_config
from simulator.context_parallel import cp_comm, kv_bytes
from simulator.hardware import hardware_for
from simulator.memory import rank_memory, stage_layers
from simulator.parallel_3d import Layout, stage_costs
from simulator.simulate import simulate
from simulator.topology import Cluster
from simulator.workload import activation_bytes_per_layer, layer_ops


def _cfg(cp=1, seq=16384, gpus=8, tp=1, **parallel):
    return load_config({"model": {"preset": "llama3-8b"}, "seq_len": seq,
                        "cluster": {"gpu": "h100-sxm", "num_gpus": gpus},
                        "training": {"precision": "bf16"},
                        "parallel": {"tp": tp, "cp": cp, "global_batch_size": 8, "zero_stage": 1, **parallel}})


def test_chunks_are_head_and_tail_and_cover_the_sequence():
    s, cp = 64, 4
    chunks = [spec.cp_chunks(s, cp, r) for r in range(cp)]
    assert chunks[0] == [(0, 8), (56, 64)] and chunks[3] == [(24, 32), (32, 40)]
    covered = sorted(p for c in chunks for a, b in c for p in range(a, b))
    assert covered == list(range(s))
    # causal work per rank (keys at or before each query) is the same for every rank
    work = [sum(p + 1 for a, b in c for p in range(a, b)) for c in chunks]
    assert len(set(work)) == 1


def test_cp_ranks_are_consecutive_replicas_next_to_tensor_parallel():
    replicas, tp, pp, cp = 4, 2, 2, 2
    groups = spec.cp_groups(replicas, tp, pp, cp)
    assert groups[0] == [0, 2] and groups[1] == [1, 3]            # stride tp: the next replica
    assert sorted(r for g in groups for r in g) == list(range(replicas * tp * pp))
    lay = Layout(tp, replicas, pp, 1, cp)
    assert lay.cp_group() == [0, 2] and lay.dp_group() == [0, 2, 4, 6]   # gradients over dp x cp replicas
    assert spec.cp_coords(3, cp) == (1, 1)


def test_block_flops_split_evenly_over_cp_ranks():
    m = _cfg().model
    for flash in (True, False):
        whole = layer_ops(m, 16384, 1, 1, False, "bf16", flash)
        part = layer_ops(m, 16384, 1, 1, False, "bf16", flash, cp=4)
        assert sum(o.flops for o in part) == pytest.approx(sum(o.flops for o in whole) / 4, rel=1e-12)
        attn = next(o for o in part if o.name in ("attention", "scores"))
        assert attn.shape[1:] in ((4096, 128, 16384), (4096, 128, 16384))   # s/cp queries over s keys


def test_collectives_are_one_gather_and_one_reduce_scatter_of_k_and_v():
    cfg = _cfg(cp=4, gpus=4, tp=1)
    m = cfg.model
    a_kv = kv_bytes(m, 16384, 1, 1, "bf16")
    assert a_kv == 2 * 16384 * (m.n_kv_heads * m.dim // m.n_heads) * 2       # K and V, whole sequence, bf16
    hw = hardware_for(cfg)
    comm = CommModel(Cluster(hw, 4))
    group = Layout.of(cfg).cp_group()
    c = cp_comm(cfg, comm, group)
    assert c.block_forward == pytest.approx(comm.time("all_gather", group, a_kv))
    assert c.block_backward == pytest.approx(comm.time("reduce_scatter", group, a_kv))
    fwd, bwd, _, _ = stage_costs(cfg, hw, comm, Layout.of(cfg), stage_layers(cfg))
    assert fwd[0].comm == pytest.approx(m.n_layers * c.block_forward, rel=1e-9)
    assert bwd[0].comm == pytest.approx(m.n_layers * c.block_backward, rel=1e-9)
    assert cp_comm(_cfg(cp=1), comm, [0]).block_forward == 0.0


def test_activations_are_those_of_the_local_tokens_plus_the_gathered_kv():
    cfg = _cfg(cp=4, gpus=4)
    m = cfg.model
    mem = rank_memory(cfg, 0, stage_layers(cfg), cfg.grad_accum_steps)
    local = activation_bytes_per_layer(m, 4096, 1, 1, False, "none", True, "bf16")
    gathered = kv_bytes(m, 16384, 1, 1, "bf16") * 3 / 4
    head = 4096 * m.vocab_size * (2 + 4 + 4)
    assert mem["activations"] == pytest.approx(m.n_layers * (local + gathered) + head, rel=1e-9)
    one = rank_memory(_cfg(cp=1, gpus=4), 0, stage_layers(_cfg(cp=1, gpus=4)), 2)
    assert mem["activations"] < one["activations"] / 3


def test_zero_shards_over_dp_times_cp():
    with_cp = rank_memory(_cfg(cp=4, gpus=8), 0, [32], 4)
    without = rank_memory(_cfg(cp=1, gpus=8), 0, [32], 1)
    assert with_cp["optimizer"] == pytest.approx(without["optimizer"], rel=1e-9)     # 8 replicas either way


def test_long_sequence_fits_and_runs_only_with_cp():
    one = simulate(_cfg(cp=1, seq=131072, gpus=8, tp=8, sequence_parallel=True, global_batch_size=1))
    eight = simulate(_cfg(cp=8, seq=131072, gpus=64, tp=8, sequence_parallel=True, global_batch_size=1))
    assert not one["fits_in_memory"] and eight["fits_in_memory"]
    assert eight["config"]["cp"] == 8
    assert eight["breakdown_s"]["exposed_comm"] > 0


def test_validation_rules():
    with pytest.raises(ConfigError, match=r"parallel.cp: 2 x cp = 6 does not divide seq_len 16384"):
        _cfg(cp=3, gpus=3)
    with pytest.raises(ConfigError, match=r"!= dp x cp x tp x pp = 1 x 2 x 1 x 1"):
        load_config({"cluster": {"num_gpus": 4}, "parallel": {"dp": 1, "cp": 2}})
    cfg = _cfg(cp=2, gpus=8)
    assert (cfg.parallel.dp, cfg.replicas, cfg.grad_accum_steps) == (4, 8, 2)   # batch per data shard, not replica


def test_recomputation_gathers_again_and_keeps_no_gathered_kv():
    """The runtime's checkpointed regions contain the gather (tests/test_comm_bytes.py counts it twice), so
    every recomputation mode pays it again in the backward and holds the gathered K/V of one block only."""
    hw = hardware_for(_cfg(cp=4, gpus=4))
    comm = CommModel(Cluster(hw, 4))
    for mode in ("selective_op", "full"):
        cfg = _cfg(cp=4, gpus=4, activation_checkpointing=mode)
        m = cfg.model
        c = cp_comm(cfg, comm, Layout.of(cfg).cp_group())
        _, bwd, _, _ = stage_costs(cfg, hw, comm, Layout.of(cfg), stage_layers(cfg))
        assert bwd[0].comm == pytest.approx(m.n_layers * (c.block_backward + c.block_forward), rel=1e-9)
        mem = rank_memory(cfg, 0, stage_layers(cfg), cfg.grad_accum_steps)
        per = activation_bytes_per_layer(m, 4096, 1, 1, False, mode, True, "bf16")
        once = kv_bytes(m, 16384, 1, 1, "bf16") * 3 / 4 + (
            activation_bytes_per_layer(m, 4096, 1, 1, False, "none", True, "bf16") if mode == "full" else 0)
        assert mem["activations"] == pytest.approx(m.n_layers * per + once + 4096 * m.vocab_size * 10, rel=1e-9)
