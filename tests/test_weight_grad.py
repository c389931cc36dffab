"""Deferred weight gradients (llama_course/core/weight_grad.py), in one process: a backward inside
`deferring` gives the input gradient at once and the linear layers' weight gradients only at `flush`, equal
to plain autograd's (fp32 and bf16 autocast, with and without non-reentrant activation checkpointing); a
W never run raises; and the comparison itself fails when the deferred weight gradients are lost."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llama_course.core import weight_grad
from llama_course.core.model import Linear, Transformer
from llama_course.core.weight_grad import WeightGradStore
from simulator.config import ModelConfig

TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 2e-2, "atol": 1e-3}}


def stack() -> nn.Sequential:
    """Linear layers with and without bias, around a LayerNorm whose weights are not deferred."""
    torch.manual_seed(0)
    return nn.Sequential(Linear(8, 16), nn.SiLU(), Linear(16, 8, bias=False), nn.LayerNorm(8), Linear(8, 4))


def loss_of(model: nn.Module, x: torch.Tensor, dtype, recompute: bool) -> torch.Tensor:
    run = (lambda t: checkpoint(model, t, use_reentrant=False)) if recompute else model
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return run(x).float().pow(2).mean()


def deferred_and_plain(dtype, recompute: bool, micro_batches: int = 2) -> tuple:
    """(plain autograd, deferred) runs of the stack over the same micro-batches: (x grads, parameters)."""
    xs = torch.randn(micro_batches, 2, 3, 8, generator=torch.Generator().manual_seed(1))
    plain, deferred = stack(), stack()
    plain_x, deferred_x = [x.clone().requires_grad_() for x in xs], [x.clone().requires_grad_() for x in xs]
    for x in plain_x:
        loss_of(plain, x, dtype, recompute).backward()
    store = WeightGradStore()
    with store.active():
        losses = [loss_of(deferred, x, dtype, recompute) for x in deferred_x]      # F of every micro-batch
        for i, loss in enumerate(losses):
            with store.deferring(i):                                               # B
                loss.backward()
            assert deferred[3].weight.grad is not None, "a norm's weight gradient comes with B"
            if i == 0:
                assert all(deferred[k].weight.grad is None for k in (0, 2, 4)), "dW before W"
                assert deferred_x[0].grad is not None
        for i in range(micro_batches):                                             # W, in order
            store.flush(i)
    store.check_empty()
    return (plain_x, plain), (deferred_x, deferred)


def assert_same_gradients(plain: tuple, deferred: tuple, dtype) -> None:
    (plain_x, plain_model), (deferred_x, deferred_model) = plain, deferred
    for a, b in zip(plain_x, deferred_x):
        torch.testing.assert_close(b.grad, a.grad, **TOLERANCE[dtype])
    for (name, p), q in zip(plain_model.named_parameters(), deferred_model.parameters()):
        assert q.grad is not None, f"{name}: no gradient"
        assert q.grad.dtype == p.dtype == torch.float32 and not q.grad.requires_grad, name
        torch.testing.assert_close(q.grad, p.grad, msg=name, **TOLERANCE[dtype])


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_deferred_then_flushed_gradients_equal_autograd(dtype, recompute):
    """Two micro-batches: input gradients at B, weight and bias gradients accumulated at W (+= on the
    second), equal to plain autograd's: fp32 rtol 1e-5 / atol 1e-6, bf16 autocast rtol 2e-2 / atol 1e-3."""
    assert_same_gradients(*deferred_and_plain(dtype, recompute), dtype)


def test_the_comparison_fails_when_the_weight_gradients_are_lost(monkeypatch):
    """Mutation check: a deferral whose W adds nothing (no weight gradient) fails the test above."""
    monkeypatch.setattr(weight_grad, "_accumulate", lambda param, grad: None)
    with pytest.raises(AssertionError, match="no gradient"):
        assert_same_gradients(*deferred_and_plain(torch.float32, False), torch.float32)


def test_a_weight_gradient_never_flushed_raises_naming_its_key():
    model, store = stack(), WeightGradStore()
    with store.active():
        with store.deferring((3, 0)):
            loss_of(model, torch.randn(2, 8), torch.float32, False).backward()
    with pytest.raises(RuntimeError, match=r"\(3, 0\)"):
        store.check_empty()


def test_without_a_deferral_linear_is_f_linear():
    """No active store: plain F.linear (autograd's own node); active store, backward outside deferring():
    the weight gradients arrive at once."""
    model, x = stack(), torch.randn(2, 8)
    assert type(model[0](x).grad_fn).__name__ == "AddmmBackward0"
    store = WeightGradStore()
    with store.active():
        assert type(model[0](x).grad_fn).__name__ == "DeferredLinearBackward"
        loss_of(model, x, torch.float32, False).backward()
    assert all(q.grad is not None for q in model.parameters()) and not store.pending


def test_every_linear_layer_of_the_model_defers_and_keeps_its_names():
    """Attention, feed-forward and head matmuls are model.Linear (nn.Linear's names and state dict)."""
    cfg = ModelConfig(preset=None, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64)
    model = Transformer(cfg, max_seq_len=16)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 7 + 1
    assert all(isinstance(model.get_submodule(name), Linear) for name in linears)
    assert "layers.0.attention.wq.weight" in model.state_dict() and "output.weight" in model.state_dict()
