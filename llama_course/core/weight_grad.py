"""Deferred weight gradients: a linear layer's backward split in two, for the zero-bubble pipeline.

For y = x W^T (+ b), with dy the gradient of the loss w.r.t. y, backward computes two products:

    B (input gradient)    dx = dy W          the previous pipeline stage waits for it: run it now
    W (weight gradient)   dW = dy^T x        nobody waits for it: store (dy, x), run it later
                          db = sum dy over tokens

          x ──┐                          dy ──┐
              ├─ x W^T ─> y                   ├─ dy W ───> dx        (B: sent back at once)
          W ──┘                          W ───┘
                                         dy^T, x ──> dy^T x ──> W.grad  (W: a closure in the store)

Zero bubble (ZB-H1, Qi et al. 2023; pipeline_parallel.py) runs each micro-batch's B in 1F1B's place
and its W later, where 1F1B would idle. Only the matmuls' weight gradients are deferred (they are most of
the backward's weight work); norm weights and the embedding get theirs during B, as usual.

    store = WeightGradStore()
    with store.active():                       # the step: Linear layers record through DeferredLinear
        out = model(x)                         # F
        with store.deferring(key):             # B: dx now, dW closures stored under key
            torch.autograd.backward(out, grad)
        store.flush(key)                       # W: every closure of key, in order, into W.grad
    store.check_empty()                        # a W forgotten raises, naming its keys

`linear` is exactly F.linear unless a store is active or the layer runs in FP8 (`training.fp8`: the same
Function computes its three matmuls with core/fp8.py's per-tensor scaled casts). A backward that runs outside `deferring` returns
the weight gradients as usual. Mixed precision: under autocast the Function casts x, W, b to the autocast
dtype itself (and computes with autocast off), dx goes back in x's dtype, dW is computed in the autocast
dtype and added to W.grad in W's dtype (fp32 main weights), as autocast's own cast would do. Activation
checkpointing (torch.utils.checkpoint, non-reentrant) recomputes the forward inside B: the store stays
active for the whole step, so the recomputation takes the same path and saves the same tensors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from llama_course.core.fp8 import E4M3, E5M2
from llama_course.core.fp8 import matmul as fp8_matmul

_ACTIVE: WeightGradStore | None = None      # the store this step's linear layers record into (None: plain F.linear)


class WeightGradStore:
    """Closures computing weight gradients, by key (zero bubble: (micro_batch, chunk))."""

    def __init__(self):
        self.pending: dict = {}
        self.key = None                         # the key of the backward running now, None outside deferring()

    @contextmanager
    def active(self):
        """Linear layers run through DeferredLinear while this is open (forwards and their backwards)."""
        global _ACTIVE
        previous, _ACTIVE = _ACTIVE, self
        try:
            yield self
        finally:
            _ACTIVE = previous

    @contextmanager
    def deferring(self, key):
        """Backward inside: input gradients now, weight gradients stored under `key` for flush(key)."""
        previous, self.key = self.key, key
        try:
            yield self
        finally:
            self.key = previous

    def add(self, closure) -> None:
        self.pending.setdefault(self.key, []).append(closure)

    def flush(self, key) -> None:
        """Run every closure stored under `key`, in the order backward stored them."""
        for closure in self.pending.pop(key, []):
            closure()

    def check_empty(self) -> None:
        if self.pending:
            keys = ", ".join(str(k) for k in self.pending)
            self.pending.clear()
            raise RuntimeError(f"weight gradients never flushed for {keys} (a W task missing from the schedule)")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           fp8: bool = False) -> torch.Tensor:
    """F.linear, or the Function while a WeightGradStore is active or the layer runs in FP8 (core/fp8.py)."""
    if fp8:
        return DeferredLinear.apply(x, weight, bias, _ACTIVE, True)
    if _ACTIVE is None or not torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    return DeferredLinear.apply(x, weight, bias, _ACTIVE, False)


def _mm(a: torch.Tensor, b: torch.Tensor, fp8: bool, a_dtype=E4M3) -> torch.Tensor:
    """a @ b (2-D): in the operands' dtype, or in FP8 (a as `a_dtype`, b as e4m3; the result in b's dtype)."""
    return fp8_matmul(a, b, a_dtype, E4M3, b.dtype) if fp8 else a @ b


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad += grad


class DeferredLinear(torch.autograd.Function):
    """y = x W^T + b, its three matmuls in FP8 when `fp8`; backward returns dx and, inside
    store.deferring(key), stores dW (and db) for later."""

    @staticmethod
    def forward(ctx, x, weight, bias, store, fp8):
        ctx.x_dtype, ctx.store, ctx.params, ctx.fp8 = x.dtype, store, (weight, bias), fp8
        device = x.device.type
        if torch.is_autocast_enabled(device):          # cast as autocast would, then compute with it off
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device, enabled=False):
            if fp8:
                y = _mm(x.reshape(-1, x.shape[-1]), weight.t(), True).reshape(*x.shape[:-1], weight.shape[0])
                y = y + bias if bias is not None else y
            else:
                y = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors                       # the cast copies under autocast
        device, fp8 = dy.device.type, ctx.fp8
        with torch.autocast(device, enabled=False):
            dy = dy.to(w.dtype)
            dx = _mm(dy.reshape(-1, dy.shape[-1]), w, fp8, E5M2).reshape(*dy.shape[:-1], w.shape[1]).to(ctx.x_dtype) \
                if ctx.needs_input_grad[0] else None
        weight, bias = ctx.params
        need_w, need_b = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        dy, x = dy.detach().reshape(-1, dy.shape[-1]), x.detach().reshape(-1, x.shape[-1])

        def grads():                                   # W runs outside backward: build no graph
            with torch.no_grad(), torch.autocast(device, enabled=False):
                return (_mm(dy.t(), x, fp8, E5M2) if need_w else None), (dy.sum(0) if need_b else None)

        store = ctx.store
        leaves = all(p.is_leaf for p, need in ((weight, need_w), (bias, need_b)) if need)
        if store is None or store.key is None or not leaves or not (need_w or need_b):   # the ordinary backward
            dw, db = grads()
            return dx, None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype), None, None

        def weight_grad():
            dw, db = grads()
            if dw is not None:
                _accumulate(weight, dw)
            if db is not None:
                _accumulate(bias, db)

        store.add(weight_grad)
        return dx, None, None, None, None
