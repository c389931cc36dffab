import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config import ConfigError, load_config
from simulator.memory import (
    layers_per_virtual_stage,
    layout_memory,
    rank_memory,
    stage_layers,
    virtual_stage_params,
)
from simulator.workload import count_params, layer_params


def test_stage_params_add_up_to_the_model():
    cfg = load_config({"model": {"preset": "llama-7b"}, "parallel": {"pp": 4, "dp": 1}})
    layers = layers_per_virtual_stage(32, 4)
    assert sum(virtual_stage_params(cfg, layers)) == pytest.approx(count_params(cfg.model), rel=1e-9)
    assert layers_per_virtual_stage(10, 4) == [3, 3, 2, 2]


def test_first_stage_of_1f1b_holds_p_micro_batches():
    # Megatron-LM's GPT (tied embeddings across pipeline stages, which the course runtime does not run)
    cfg = load_config({"model": {"preset": "gpt-18.4b"}, "seq_len": 2048,
                       "parallel": {"pp": 4, "dp": 1, "global_batch_size": 32}}, runtime=False)
    layers = layers_per_virtual_stage(cfg.model.n_layers, 4)
    first, last = rank_memory(cfg, 0, layers, 32), rank_memory(cfg, 3, layers, 32)
    assert first["activations"] > 3 * (last["activations"] - 1e9)
    gpipe = load_config({"model": {"preset": "gpt-18.4b"}, "seq_len": 2048,
                         "parallel": {"pp": 4, "dp": 1, "global_batch_size": 32, "schedule": "gpipe"}},
                        runtime=False)
    assert rank_memory(gpipe, 0, layers, 32)["activations"] > 7 * first["activations"]
    mem, rank = layout_memory(cfg, layers, 32)
    assert rank == 0 and mem["total"] == first["total"]


def test_default_gradient_buffer_is_fp32_under_bf16():
    cfg = load_config({"model": {"preset": "llama-7b"}, "training": {"precision": "bf16"},
                       "parallel": {"dp": 1, "global_batch_size": 8}})
    psi = sum(virtual_stage_params(cfg, [32]))
    assert rank_memory(cfg, 0, [32], 8)["grads"] == pytest.approx(4 * psi)
    cfg.training.grad_reduce_dtype = "bf16"
    assert rank_memory(cfg, 0, [32], 8)["grads"] == pytest.approx(2 * psi)


def test_zero3_holds_gather_buffers():
    """ZeRO-3 shards the weights but a rank holds the whole weights of the blocks gathered at once (one just
    in time in the course's engine, two with FSDP2's prefetch) and one block's whole gradient. FSDP's shard
    is the fp32 master itself (in `optimizer`): no 16-bit shard beside it."""

    def mem(impl):
        cfg = load_config({"model": {"preset": "llama-7b"}, "cluster": {"gpu": "a100-80gb", "num_gpus": 8},
                           "parallel": {"zero_stage": 3, "global_batch_size": 8, "implementation": impl}})
        return cfg, rank_memory(cfg, 0, [32], 1)

    cfg, course = mem("course")
    _, torch = mem("torch")
    psi, block = sum(virtual_stage_params(cfg, [32])), layer_params(cfg.model)
    assert course["params"] == pytest.approx(2 * psi / 8 + 2 * block)
    assert torch["params"] == pytest.approx(2 * 2 * block)
    assert torch["optimizer"] == course["optimizer"] == pytest.approx(12 * psi / 8)
    assert course["grads"] == pytest.approx(4 * psi / 8 + 4 * block)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b"]), st.integers(2, 12), st.integers(1, 4),
       st.integers(1, 6), st.integers(0, 5), st.sampled_from([None, 1, 2]), st.sampled_from([None, 1, 2]))
def test_the_fullest_rank_is_among_the_three_checked(schedule, pp, vpp, m_per_pp, extra, first, last):
    """layout_memory looks at ranks 0, 1 and p - 1 only; walking every rank finds nothing fuller (uneven
    splits, first/last stage layer counts and interleaving included)."""
    if schedule != "interleaved_1f1b":
        vpp = 1
    elif vpp == 1:
        vpp = 2
    n_layers = pp * vpp * 3 + extra
    n_micro = pp * m_per_pp
    par = {"pp": pp, "vpp": vpp, "schedule": schedule, "dp": 1, "global_batch_size": n_micro,
           "first_stage_layers": first, "last_stage_layers": last}
    try:
        cfg = load_config({"model": {"preset": "gpt-1.7b", "n_layers": n_layers}, "seq_len": 512, "parallel": par})
    except ConfigError:
        return                                   # a split the schema refuses
    layers = stage_layers(cfg)
    mem, _ = layout_memory(cfg, layers, n_micro)
    assert mem["total"] == max(rank_memory(cfg, r, layers, n_micro)["total"] for r in range(pp))
