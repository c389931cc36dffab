import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.compute import block_times
from simulator.config import load_config
from simulator.hardware import gpu_preset
from simulator.workload import (
    activation_bytes_per_layer,
    alternate_matmuls,
    backward_op,
    forward_flops_per_token,
    head_ops,
    layer_ops,
    model_flops_per_token,
    state_bytes,
    state_bytes_per_param,
)


def _model(preset):
    return load_config({"model": {"preset": preset}}).model


@pytest.mark.parametrize("preset", ["gpt-1.7b", "llama2-70b", "llama3-8b", "tiny"])
@pytest.mark.parametrize("flash", [True, False])
def test_op_flops_add_up_to_the_per_token_count(preset, flash):
    m = _model(preset)
    s, b = 256, 2
    ops = layer_ops(m, s, b, 1, False, "bf16", flash)
    per_token = (m.n_layers * sum(o.flops for o in ops) + sum(o.flops for o in head_ops(m, s, b))) / (s * b)
    assert per_token == pytest.approx(forward_flops_per_token(m, s))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.booleans(), st.booleans())
def test_tensor_parallel_splits_matmuls_not_replicated_ops(tp, sp, flash):
    m = _model("gpt-7.5b")
    one = layer_ops(m, 512, 1, 1, sp, "fp16", flash)
    split = layer_ops(m, 512, 1, tp, sp, "fp16", flash)
    assert sum(o.flops for o in split) == pytest.approx(sum(o.flops for o in one) / tp)
    norm_one = next(o for o in one if o.name == "norm_attn").bytes
    norm_split = next(o for o in split if o.name == "norm_attn").bytes
    assert norm_split == pytest.approx(norm_one / tp if sp else norm_one)


def test_backward_is_twice_forward_for_matmuls():
    op = layer_ops(_model("llama-7b"), 128)[1]
    assert backward_op(op).flops == 2 * op.flops


def test_megatron_hardware_flops_formula():
    # 96 B s l h^2 (1 + s/(6h) + V/(16 l h)) = model FLOPs + one recomputed forward of the blocks
    m = _model("gpt-145.6b")
    B, s, L, h, V = 2304, 2048, m.n_layers, m.dim, m.vocab_size
    megatron = 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))
    fwd_blocks = forward_flops_per_token(m, s) - 2 * V * h
    ours = B * s * (model_flops_per_token(m, s) + fwd_blocks)
    assert ours == pytest.approx(megatron, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 4), st.sampled_from([512, 1024, 2048]))
def test_activation_memory_matches_korthikanti(t, b, s):
    m = _model("gpt-18.4b")
    h, a = m.dim, m.n_heads
    sbh = s * b * h
    kw = dict(seq_len=s, micro_batch=b, tp=t, precision="fp16")
    assert activation_bytes_per_layer(m, **kw) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert activation_bytes_per_layer(m, sequence_parallel=True, **kw) == pytest.approx(
        sbh * (34 / t + 5 * a * s / (h * t)))
    assert activation_bytes_per_layer(m, sequence_parallel=True, recompute="selective", **kw) == pytest.approx(
        sbh * 34 / t)
    assert activation_bytes_per_layer(m, recompute="full", **kw) == pytest.approx(2 * sbh)
    assert activation_bytes_per_layer(m, sequence_parallel=True, recompute="full", **kw) == pytest.approx(
        2 * sbh / t)


def test_flash_attention_drops_the_quadratic_term():
    m = _model("llama-7b")
    short = activation_bytes_per_layer(m, 1024, flash=True) / 1024
    long = activation_bytes_per_layer(m, 8192, flash=True) / 8192
    assert long == pytest.approx(short)
    assert activation_bytes_per_layer(m, 8192, flash=False) > 2 * activation_bytes_per_layer(m, 8192, flash=True)


def test_state_bytes_by_precision_and_zero():
    assert sum(state_bytes_per_param("bf16", "adamw").values()) == 16          # ZeRO paper: 2 + 2 + 12
    assert sum(state_bytes_per_param("fp32", "adamw").values()) == 16
    assert state_bytes_per_param("fp32", "sgd")["optimizer"] == 4
    psi, dp = 1e9, 8
    z = [state_bytes(psi, "bf16", "adamw", stage, dp) for stage in range(4)]
    assert z[0] == {"params": 2e9, "grads": 2e9, "optimizer": 12e9}
    assert z[1]["optimizer"] == 12e9 / dp and z[1]["grads"] == 2e9
    assert z[2]["grads"] == 2e9 / dp and z[2]["params"] == 2e9
    assert z[3]["params"] == 2e9 / dp


@pytest.mark.parametrize("sp", [False, True])
def test_flash_attention_keeps_what_selective_recomputation_keeps(sp):
    """A fused attention kernel stores no s x s scores: it keeps what Korthikanti's selective recomputation
    keeps (34 s b h / t with sequence parallelism for GPT), its output once (the output projection's input),
    plus a 4-byte log-sum-exp per row and head."""
    m = _model("gpt-18.4b")
    s, b, t = 2048, 2, 8
    kw = dict(seq_len=s, micro_batch=b, tp=t, sequence_parallel=sp, precision="fp16")
    lse = 4 * m.n_heads / t * s * b
    assert activation_bytes_per_layer(m, flash=True, **kw) == pytest.approx(
        activation_bytes_per_layer(m, recompute="selective", **kw) + lse)
    if sp:
        assert activation_bytes_per_layer(m, flash=True, **kw) == pytest.approx(34 * s * b * m.dim / t + lse)


def test_megatron_bytes_per_parameter_with_fp32_main_gradients():
    """Megatron-LM's distributed-optimizer table: bf16 parameters with fp32 gradients keep 18 bytes per
    parameter (2 + 4 + 12), and 6 + 12/d with the distributed optimizer (ZeRO-1)."""
    assert sum(state_bytes_per_param("bf16", "adamw", "fp32").values()) == 18
    d = 8
    assert sum(state_bytes(1.0, "bf16", "adamw", 1, d, "fp32").values()) == pytest.approx(6 + 12 / d)
    assert sum(state_bytes(1.0, "bf16", "adamw", 1, d, "bf16").values()) == pytest.approx(4 + 12 / d)
    assert state_bytes_per_param("fp32", "adamw", "bf16")["grads"] == 4      # the fp32 p.grad stays


def test_selective_op_recomputes_every_second_linear_matmul():
    """torchtitan's per-op policy on Llama 3 8B (h 4096, 8 kv heads of 128, f 14336), t = 2: wk, wo and w3 run
    again, 2 (h kv + h h + h f) / t FLOPs per token; a fused kernel's selective recomputes nothing. It keeps
    selective's bytes less K and the w3 branch."""
    m = _model("llama3-8b")
    s, b, t = 8192, 1, 2
    h, kv, f = m.dim, m.n_kv_heads * m.dim // m.n_heads, m.ffn_dim
    assert (h, kv, f) == (4096, 1024, 14336)
    ops = alternate_matmuls(m, s, b, t)
    assert [o.name for o in ops] == ["wk", "wo", "w3"]
    assert sum(o.flops for o in ops) == pytest.approx(2 * s * b * (h * kv + h * h + h * f) / t)
    hw = gpu_preset("h100-sxm")
    op = block_times(m, s, b, t, True, "bf16", True, "selective_op", hw)
    assert op.recompute_flops == pytest.approx(2 * s * b * (h * kv + h * h + h * f) / t)
    assert block_times(m, s, b, t, True, "bf16", True, "selective", hw).recompute == 0.0
    assert 0 < op.recompute < op.forward
    kw = dict(seq_len=s, micro_batch=b, tp=t, sequence_parallel=True, flash=True, precision="bf16")
    assert activation_bytes_per_layer(m, recompute="selective", **kw) - activation_bytes_per_layer(
        m, recompute="selective_op", **kw) == pytest.approx(2 * s * b * (kv + f) / t)
    assert [o.name for o in alternate_matmuls(_model("gpt-18.4b"), 2048)] == ["wk", "wo", "w2"]
