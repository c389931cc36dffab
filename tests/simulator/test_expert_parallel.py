"""Mixture of experts and expert parallelism in the simulator, held to closed forms.

Mixtral 8x7B's published sizes (46.7B parameters, 12.9B active); FLOPs and MFU count the active ones;
the per-GPU expert FLOPs do not depend on ep (balanced routing) while the GEMMs grow; one block's
dispatch and combine are all-to-alls of the b s k h routed copies; expert weights, gradients and states
are /ep per GPU and ZeRO shards them over the replicas / ep holding them; dense models are untouched.
"""

import pytest

from simulator import capabilities, spec
from simulator import plan as planner
from simulator.collectives import CommModel
from simulator.config import ConfigError, load_config
from simulator.expert_parallel import (
    dispatch_bytes,
    edp_group,
    ep_comm,
    expert_degrees,
    expert_wire_share,
    local_layer_params,
    reduced_params,
)
from simulator.hardware import hardware_for
from simulator.memory import rank_memory, stage_layers, virtual_stage_params
from simulator.parallel_3d import Layout
from simulator.simulate import simulate
from simulator.topology import Cluster
from simulator.workload import (
    activation_bytes_per_layer,
    active_matmul_params,
    active_params,
    count_params,
    expert_params,
    forward_flops_per_token,
    layer_ops,
    layer_params,
    model_flops_per_token,
)

D, L, F, V, E, K, KV = 4096, 32, 14336, 32000, 8, 2, 1024    # Mixtral 8x7B


def _cfg(ep=1, gpus=8, zero=1, preset="mixtral-8x7b", **parallel):
    return load_config({"model": {"preset": preset}, "seq_len": 4096,
                        "cluster": {"gpu": "h100-sxm", "num_gpus": gpus}, "training": {"precision": "bf16"},
                        "parallel": {"ep": ep, "global_batch_size": gpus, "zero_stage": zero, **parallel}},
                       runtime=False)        # the simulator prices layouts the runtime does not run too


def _tiny_moe(arch="llama", ep=1, dp=4):
    model = {"arch": arch, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4 if arch == "gpt" else 2,
             "ffn_dim": 96, "vocab_size": 128, "n_experts": 4, "experts_per_token": 2}
    return load_config({"model": model, "seq_len": 32, "cluster": {"gpu": "cpu", "num_gpus": dp},
                        "parallel": {"dp": dp, "ep": ep, "global_batch_size": dp}}, runtime=False)


def test_mixtral_total_and_active_parameters_match_the_published_sizes():
    m = _cfg().model
    assert count_params(m) == pytest.approx(46.7e9, rel=0.01)
    assert active_params(m) == pytest.approx(12.9e9, rel=0.01)
    # closed forms: attention (wq, wk, wv, wo), router, E or k SwiGLU experts, two norms; embedding, head, norm
    attn, expert = 2 * D * D + 2 * D * KV, 3 * D * F
    assert count_params(m) == L * (attn + E * D + E * expert + 2 * D) + 2 * V * D + D
    assert active_params(m) == L * (attn + E * D + K * expert + 2 * D) + 2 * V * D + D
    assert expert_params(m) == E * expert


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_parameter_count_is_the_model_definitions(arch):
    m = _tiny_moe(arch).model
    assert count_params(m, 32) == sum(spec.numel(s) for _, s in spec.parameters(m, 32))
    assert layer_params(m) == sum(spec.numel(s) for _, s in spec.block_parameters(m))


def test_flops_and_mfu_count_the_active_parameters():
    m, s = _cfg().model, 4096
    active = 2 * D * D + 2 * D * KV + E * D + K * 3 * D * F
    assert active_matmul_params(m) == active
    assert forward_flops_per_token(m, s) == L * (2 * active + 4 * s * D) + 2 * V * D
    assert model_flops_per_token(m, s) == 3 * forward_flops_per_token(m, s)
    total = forward_flops_per_token(m, s) + L * 2 * (E - K) * 3 * D * F     # what counting every expert gives
    assert model_flops_per_token(m, s) < 0.35 * 3 * total
    r = simulate(_cfg(ep=8, gpus=64, zero=3))
    assert r["model_flops_per_step"] == r["tokens_per_step"] * model_flops_per_token(m, s)
    peak = hardware_for(_cfg()).peak("bf16")
    assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / r["step_time_s"] / 64 / peak, rel=1e-12)
    assert r["experts"]["active_params"] == active_params(m) and r["config"]["ep"] == 8


@pytest.mark.parametrize("ep", [1, 2, 4, 8])
def test_block_flops_are_the_active_ones_and_ep_makes_fewer_larger_gemms(ep):
    m, s = _cfg().model, 4096
    ops = layer_ops(m, s, 1, 1, False, "bf16", True, ep=ep)
    flops = sum(o.flops for o in ops if o.kind in ("matmul", "flash"))
    assert flops == pytest.approx(s * (2 * active_matmul_params(m) + 4 * s * D), rel=1e-12)   # whatever ep is
    up = next(o for o in ops if o.name == "mlp_gate_up")
    down = next(o for o in ops if o.name == "mlp_down")
    assert up.shape == (E // ep, s * K * ep / E, D, 2 * F) and down.shape == (E // ep, s * K * ep / E, F, D)
    router = next(o for o in ops if o.name == "router")
    assert router.flops == 2 * s * D * E
    permute = [o for o in ops if o.name in ("moe_permute", "moe_unpermute")]
    assert [o.bytes for o in permute] == [2 * 2 * s * K * D] * 2           # gather / scatter of s k h, bf16
    if ep > 1:                                                             # larger GEMMs, no slower
        from simulator.compute import block_times
        hw = hardware_for(_cfg())
        one = block_times(m, s, 1, 1, False, "bf16", True, "none", hw, ep=1)
        more = block_times(m, s, 1, 1, False, "bf16", True, "none", hw, ep=ep)
        assert more.forward <= one.forward and more.forward_flops == pytest.approx(one.forward_flops, rel=1e-12)


def test_dispatch_and_combine_are_all_to_alls_of_the_routed_copies():
    cfg = _cfg(ep=8, gpus=64, zero=3)         # one micro-batch per step (ZeRO-3: Mixtral fits on 64 H100s)
    assert dispatch_bytes(cfg.model, 4096, 1, 1, 1, "bf16") == 4096 * K * D * 2
    assert dispatch_bytes(cfg.model, 4096, 2, 2, 2, "bf16") == 2 * 2048 * K * D * 2 / 2     # b s/cp, 1/t of it
    comm = CommModel(Cluster(hardware_for(cfg), 64))
    group = Layout.of(cfg).ep_group()
    c = ep_comm(cfg, comm, group)
    one = comm.time("all_to_all", group, 4096 * K * D * 2)
    assert c.block_forward == pytest.approx(2 * one, rel=1e-12) and c.block_backward == c.block_forward
    assert group == list(range(8))            # inside the first node
    assert ep_comm(_cfg(ep=1), comm, Layout.of(_cfg(ep=1)).ep_group()).block_forward == 0.0
    r = simulate(cfg)                          # one micro-batch, no recomputation, one stage: L blocks x 2 pairs
    assert r["experts"]["all_to_all_s"] == pytest.approx(L * 4 * one, rel=1e-12)
    assert r["experts"]["all_to_all_share"] == pytest.approx(L * 4 * one / r["step_time_s"], rel=1e-12)
    assert r["comm_s"]["tp_exposed"] == pytest.approx(L * 4 * one, rel=1e-12)          # exposed, as tp's
    for mode in ("full", "selective_op"):     # recomputation repeats the pair (the course reruns the whole
        again = simulate(_cfg(ep=8, gpus=64, zero=3, activation_checkpointing=mode))    # block's exchanges)
        assert again["experts"]["all_to_all_s"] == pytest.approx(L * 6 * one, rel=1e-12)
        assert again["comm_s"]["tp_exposed"] == pytest.approx(L * 6 * one, rel=1e-12)
    dense = simulate(_cfg(ep=1, gpus=64, zero=3))
    assert dense["experts"]["all_to_all_s"] == 0.0


def test_ep_groups_are_consecutive_replicas_as_the_runtime_builds_them():
    lay = Layout(2, 8, 2, 1, 1, 4)            # tp 2, 8 replicas, pp 2, ep 4
    assert lay.ep_group() == [0, 2, 4, 6] and lay.ep_group(1, 1, 1) == [25, 27, 29, 31]
    assert edp_group(lay) == [0, 8] and edp_group(lay, 1, 3, 1) == [23, 31]
    assert lay.ep_group() in spec.ep_groups(8, 2, 2, 4)
    assert edp_group(lay) in spec.ep_groups(8, 2, 2, 4, expert_data=True)


@pytest.mark.parametrize("ep", [1, 2, 4, 8])
def test_expert_weights_and_states_are_split_over_ep(ep):
    cfg = _cfg(ep=ep, zero=0)
    m = cfg.model
    per_gpu = count_params(m) - L * expert_params(m) * (ep - 1) / ep
    assert sum(virtual_stage_params(cfg, stage_layers(cfg))) == pytest.approx(per_gpu, rel=1e-12)
    assert local_layer_params(m, ep) == layer_params(m) - expert_params(m) * (ep - 1) / ep
    mem = rank_memory(cfg, 0, stage_layers(cfg), 1)
    assert mem["params"] == pytest.approx(2 * per_gpu, rel=1e-12)            # bf16 weights
    assert mem["grads"] == pytest.approx(4 * per_gpu, rel=1e-12)             # fp32 gradient buffers
    assert mem["optimizer"] == pytest.approx(12 * per_gpu, rel=1e-12)        # fp32 master + Adam's two


@pytest.mark.parametrize("ep", [1, 2, 4, 8])
def test_zero_shards_experts_over_the_replicas_holding_them(ep):
    # ZeRO-1 over 16 replicas: non-expert states / 16, each GPU's E/ep experts over the 16/ep replicas holding
    # them, so the experts' states are (E_params / ep) / (16 / ep) = E_params / 16: the whole model / 16
    cfg = _cfg(ep=ep, gpus=16, zero=1)
    mem = rank_memory(cfg, 0, stage_layers(cfg), 1)
    assert mem["optimizer"] == pytest.approx(12 * count_params(cfg.model) / 16, rel=1e-12)
    z2 = _cfg(ep=ep, gpus=16, zero=2, micro_batch_size=1)
    z2.parallel.global_batch_size = 16                # one micro-batch: the shard plus one block's whole grads
    g = rank_memory(z2, 0, stage_layers(z2), 1)["grads"]
    shard = count_params(z2.model) / 16 * 4
    assert g == pytest.approx(shard + 4 * local_layer_params(z2.model, ep), rel=1e-12)


def test_moe_activations_keep_the_routed_copies_and_the_experts_intermediates():
    m = _cfg().model
    dense = _cfg(preset="llama3-8b", ep=1).model       # same shape, one MLP (vocab aside, which blocks ignore)
    s, b = 4096, 1
    for flash in (True, False):
        moe = activation_bytes_per_layer(m, s, b, flash=flash, precision="bf16")
        one = activation_bytes_per_layer(dense, s, b, flash=flash, precision="bf16")
        assert moe - one == pytest.approx(2 * s * b * K * D + 3 * 2 * s * b * (K - 1) * F, rel=1e-12)


def test_expert_gradients_cost_their_own_group():
    assert expert_wire_share(_cfg(ep=8)) == 0.0                      # ep = replicas: nothing to reduce
    assert expert_wire_share(_cfg(ep=2, gpus=16)) == pytest.approx((7 / 8) / (15 / 16), rel=1e-12)
    assert expert_wire_share(_cfg(ep=1, gpus=16)) == 1.0
    cfg = _cfg(ep=8)
    psi = virtual_stage_params(cfg, stage_layers(cfg))
    assert reduced_params(cfg, stage_layers(cfg), psi) == pytest.approx(
        [psi[0] - L * expert_params(cfg.model) / 8], rel=1e-12)      # only the non-expert gradients travel
    slow, fast = simulate(_cfg(ep=1, gpus=64, zero=3)), simulate(_cfg(ep=8, gpus=64, zero=3))
    assert fast["comm_s"]["dp_total"] < 0.5 * slow["comm_s"]["dp_total"]


def test_dense_models_are_unchanged():
    m = _cfg(preset="llama3-8b").model
    assert active_matmul_params(m) == 2 * D * D + 2 * D * KV + 3 * D * F
    assert local_layer_params(m, 1) == layer_params(m)
    names = [o.name for o in layer_ops(m, 4096, 1, 1, False, "bf16", True)]
    assert names == ["norm_attn", "qkv", "rope", "attention", "attn_out", "residual_attn", "norm_mlp",
                     "mlp_gate_up", "swiglu", "mlp_down", "residual_mlp"]
    cfg = _cfg(preset="llama3-8b")
    psi = virtual_stage_params(cfg, stage_layers(cfg))
    assert reduced_params(cfg, stage_layers(cfg), psi) is psi
    assert "experts" not in simulate(cfg)


def test_validation_and_the_planners_ep_degrees():
    with pytest.raises(ConfigError, match="needs a mixture of experts"):
        _cfg(preset="llama3-8b", ep=2)
    with pytest.raises(ConfigError, match="does not divide model.n_experts"):
        load_config({"model": {"preset": "mixtral-8x7b"}, "cluster": {"num_gpus": 6}, "parallel": {"dp": 6, "ep": 3}},
                    runtime=False)
    with pytest.raises(ConfigError, match="replicas"):
        _cfg(ep=8, gpus=8, tp=2)
    m = _cfg().model
    assert expert_degrees(m, 16) == (1, 2, 4, 8) and expert_degrees(m, 2) == (1, 2)
    assert expert_degrees(_cfg(preset="llama3-8b").model, 16) == (1,)
    cfg = _tiny_moe(dp=4)
    cands = planner.candidates(cfg)
    eps = {c["ep"] for c in cands}
    # the capability table's ep column says which ep the runtime runs (without one, only ep 1 is searched)
    runs = {ep for ep in (1, 2, 4) if "ep" in capabilities.COLUMNS and capabilities.supported(
        capabilities.key(cfg, dp=4, tp=1, pp=1, cp=1, zero_stage=0, ep=ep))}
    assert eps == (runs | {1})
    assert all("ep" not in c for c in planner.candidates(_cfg(preset="llama3-8b")))


def test_comm_bytes_of_expert_parallelism():
    from simulator.comm_bytes import comm_bytes, unpredicted
    dense_ep1 = _tiny_moe(dp=4, ep=1)
    assert unpredicted(dense_ep1) is None                  # every expert runs: a dense model's gradient sync
    cfg = _tiny_moe(dp=4, ep=2)
    assert "routing" in unpredicted(cfg) and unpredicted(cfg, balanced_routing=True) is None
    with pytest.raises(ValueError, match="routing"):
        comm_bytes(cfg, steps=1)
    m, d, e, k, blocks = cfg.model, 64, 4, 2, 2
    rows = 32 * k                                          # one sequence of 32 tokens per rank and step
    got = comm_bytes(cfg, steps=1, balanced_routing=True)
    # per block: counts (E int64), dispatch and combine forward, their reverses backward (fp32 rows)
    assert [r[0]["all_to_all"] for r in got] == [blocks * (8 * e + 4 * 4 * rows * d)] * 4
    # the experts leave the buckets for one ring all-reduce over the edp group (2 replicas): per rank
    # 2 (n - n/2) elements, n = its E/ep experts' parameters; plus the experts' norm over the ep group
    expert = 3 * d * 96
    n = blocks * (e // 2) * expert
    base = comm_bytes(dense_ep1, steps=1)[0][0]
    non_expert = count_params(m, 32) - blocks * e * expert
    ring = lambda n, r: 2 * (n - n // r) * 4                 # noqa: E731  (n divisible by r here)
    assert base["send"] == ring(count_params(m, 32), 4)      # ZeRO 0: one all-reduce of everything over 4
    assert got[0][0]["send"] == ring(non_expert, 4) + ring(n, 2)
    assert got[0][0]["all_reduce"] == base["all_reduce"] + 8
    for mode in ("full", "selective"):                    # the forward's three exchanges again (measured: the
        again = _tiny_moe(dp=4, ep=2)                     # checkpointed block reruns them in every mode)
        again.parallel.activation_checkpointing = mode
        assert comm_bytes(again, 1, True)[0][0]["all_to_all"] == got[0][0]["all_to_all"] + blocks * (8 * e + 4 * 2 * rows * d)


def test_the_step_reduces_only_what_crosses_the_data_parallel_wire(monkeypatch):
    from simulator import parallel_3d
    seen = []
    real = parallel_3d.grad_buckets
    monkeypatch.setattr(parallel_3d, "grad_buckets", lambda cfg, sem, layers, psi, wire: seen.append(psi) or
                        real(cfg, sem, layers, psi, wire))
    cfg = _cfg(ep=4, gpus=64, zero=3)         # experts over 16 replicas instead of 64: (15/16) / (63/64) a byte
    simulate(cfg)
    layers = stage_layers(cfg)
    expert = L * expert_params(cfg.model) / 4
    want = virtual_stage_params(cfg, layers)[0] - expert * (1 - (15 / 16) / (63 / 64))
    assert seen and seen[0] == pytest.approx([want], rel=1e-12)
