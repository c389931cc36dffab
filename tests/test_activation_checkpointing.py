"""Activation checkpointing: same gradients, less memory; bytes kept per layer, measured, against the
simulator's activation model (simulator.workload.activation_bytes_per_layer)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llama_course.core.distributed import Context
from llama_course.core.model import build_model
from llama_course.engine import build_engine, cross_entropy
from llama_course.parallel.activation_checkpointing import MODES, measure_saved_bytes
from simulator.config import load_config
from simulator.workload import activation_bytes_per_layer, alternate_matmuls

SHAPE = {"preset": "tiny", "dim": 128, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 256, "vocab_size": 128}
S, B = 64, 2


def config(n_layers, mode):
    return load_config({"model": {**SHAPE, "n_layers": n_layers}, "seq_len": S,
                        "parallel": {"activation_checkpointing": mode, "micro_batch_size": B, "global_batch_size": B},
                        "training": {"precision": "fp32", "lr": 1e-3, "warmup_steps": 0}})


def saved_bytes(n_layers, mode):
    cfg = config(n_layers, mode)
    engine = build_engine(cfg, Context(), build_model(cfg))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 128, (B, S), generator=g), torch.randint(0, 128, (B, S), generator=g)
    loss, live = measure_saved_bytes(lambda: cross_entropy(engine.model(x), y), module=engine.model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in engine.model.named_parameters()}
    return live, grads


@pytest.fixture(scope="module")
def measured():
    out = {}
    for mode in MODES:
        (one, grads), (three, _) = saved_bytes(1, mode), saved_bytes(3, mode)
        out[mode] = {"per_layer": (three - one) / 2, "grads": grads}
    return out


def model_bytes(mode):
    return activation_bytes_per_layer(config(1, mode).model, S, B, recompute=mode, flash=True, precision="fp32")


def test_checkpointing_leaves_gradients_unchanged(measured):
    for mode in ("selective", "selective_op", "full"):
        for name, g in measured["none"]["grads"].items():
            torch.testing.assert_close(measured[mode]["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_full_checkpointing_keeps_only_the_block_input(measured):
    """full: e s b h per layer, exactly what the simulator's model says."""
    assert measured["full"]["per_layer"] == pytest.approx(model_bytes("full"), rel=0.01)
    assert model_bytes("full") == 4 * S * B * SHAPE["dim"]


def test_no_checkpointing_is_near_the_korthikanti_model(measured):
    """Eager PyTorch keeps somewhat more than the fused-kernel model (fp32 RMSNorm intermediates, RoPE halves)."""
    ratio = measured["none"]["per_layer"] / model_bytes("none")
    assert 1.0 <= ratio <= 1.6, ratio


def test_selective_sits_between(measured):
    """selective keeps the matmul outputs only: below none, above full."""
    assert measured["full"]["per_layer"] < measured["selective"]["per_layer"] < 0.7 * measured["none"]["per_layer"]


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten.mm.default
        return func(*args, **(kwargs or {}))


def backward_matmuls(mode, n_layers=2):
    """Linear matmuls (aten.mm) run by one backward: the gradients' and whatever the forward runs again."""
    cfg = config(n_layers, mode)
    engine = build_engine(cfg, Context(), build_model(cfg))
    x = torch.randint(0, 128, (B, S), generator=torch.Generator().manual_seed(0))
    loss = cross_entropy(engine.model(x), x)
    with _CountMatmuls() as count:
        loss.backward()
    return count.n


def test_selective_op_recomputes_every_second_linear_matmul():
    """torchtitan's per-op policy: of a LLaMA block's seven linear matmuls (wq wk wv wo w1 w3 w2) the 2nd, 4th
    and 6th run again in backward (the simulator's workload.alternate_matmuls); selective reruns none, full
    six (torch's non-reentrant checkpoint stops recomputing once backward has what it needs: w2's output is not
    among it)."""
    none, selective, op, full = (backward_matmuls(mode) for mode in MODES)
    assert selective == none
    assert op - none == 3 * 2
    assert full - none == 6 * 2
    assert [m.name for m in alternate_matmuls(config(1, "selective_op").model, S, B)] == ["wk", "wo", "w3"]


def test_selective_op_keeps_less_than_selective(measured):
    """It does not keep the outputs of the matmuls it recomputes that selective keeps for backward (K, w3's), and
    it keeps the attention kernel's outputs, its 4-byte log-sum-exp per row and head among them."""
    per = {mode: measured[mode]["per_layer"] for mode in MODES}
    assert per["full"] < per["selective_op"] < per["selective"]
    kv_dim = SHAPE["dim"] * SHAPE["n_kv_heads"] // SHAPE["n_heads"]
    lse = 4 * B * SHAPE["n_heads"] * S
    assert per["selective"] - per["selective_op"] == 4 * S * B * (kv_dim + SHAPE["ffn_dim"]) - lse
    # the simulator's model drops the same two outputs (its log-sum-exp is counted under both modes)
    assert model_bytes("selective") - model_bytes("selective_op") == 4 * S * B * (kv_dim + SHAPE["ffn_dim"])
