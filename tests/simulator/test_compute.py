import pytest

from simulator.compute import op_time
from simulator.config import load_config
from simulator.hardware import gpu_preset
from simulator.workload import backward_op, causal_fraction, forward_flops_per_token, layer_ops


def _model(preset):
    return load_config({"model": {"preset": preset}}).model


def test_causal_flash_attention_runs_the_lower_triangle_of_tiles():
    """FlashAttention with a causal mask computes the n (n + 1) / 2 tiles on and below the diagonal of the
    n x n grid of 128 x 128 tiles: about half the square at long sequences, so its time halves; the model
    FLOPs keep counting the full square (Megatron-LM's and PaLM's convention)."""
    assert causal_fraction(128) == 1.0
    assert causal_fraction(8192) == pytest.approx(65 / 128)
    m, hw = _model("llama-7b"), gpu_preset("h100-sxm")
    s = 8192
    attn = next(o for o in layer_ops(m, s, 1, 1, False, "bf16", True) if o.name == "attention")
    assert attn.flops == 4.0 * s * s * m.dim
    assert attn.executed == pytest.approx(attn.flops * 65 / 128)
    full = attn._replace(executed=None)
    for op, ref in ((attn, full), (backward_op(attn), backward_op(full))):
        over = hw.kernel_overhead
        assert (op_time(op, hw, "bf16") - over) == pytest.approx((op_time(ref, hw, "bf16") - over) * 65 / 128)
    per_token = sum(o.flops for o in layer_ops(m, s, 1, 1, False, "bf16", True)) * m.n_layers / s
    assert per_token == pytest.approx(forward_flops_per_token(m, s) - 2 * m.vocab_size * m.dim)
