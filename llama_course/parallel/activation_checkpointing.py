"""Activation checkpointing: keep less for backward, compute some of the forward twice.

Backward needs the forward's intermediate tensors. Per block and micro-batch, e bytes per element, a LLaMA
block with a fused attention kernel keeps (Korthikanti et al. 2022; `simulator.workload.activation_bytes_per_layer`,
kv = n_kv_heads / n_heads, f the SwiGLU width):

    none:       e s b h (7 + 2 kv) + 3 e s b f     norm, q/k/v, attention output, residual inputs, SwiGLU
    selective:  only what the matmuls produce is kept; norms, RoPE, the attention core softmax(QK^T)V and
                SwiGLU's element-wise work are recomputed in backward (few FLOPs, many bytes)
    selective_op: torchtitan's per-op policy (`selective_ac_option: op`): the attention kernel's output and
                every first of two linear matmuls are kept (wq, wv, w1, w2), every second one (wk, wo, w3)
                is recomputed with the element-wise work: about 37% of a LLaMA block's forward matmul
                FLOPs again, for less memory than selective
    full:       e s b h, the block's input; the whole block runs again in backward (one more forward:
                hardware FLOPs 8N instead of 6N per token, about a third more compute)

Measured here (tests/test_activation_checkpointing.py, fp32, h = 128, s = 64, b = 2): full keeps exactly
e s b h per layer; none keeps 1.0-1.6x the model (eager PyTorch also keeps RMSNorm's fp32 intermediates and
RoPE's halves); selective under 0.7x none; selective_op keeps selective's less the K and w3 outputs (plus the
attention kernel's log-sum-exp).

`parallel.activation_checkpointing: none | selective | selective_op | full`; in every engine it is a model transform
(`ActivationCheckpointing`) applied to the blocks after tensor parallelism and before the pipeline split. `measure_saved_bytes`
counts the bytes alive after a forward (what backward will read), on any device, so the runtime can be
held against the simulator's activation model (tests/test_activation_checkpointing.py).

    llama-course train configs/tiny.yaml --set parallel.activation_checkpointing=full
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from llama_course.core.engine_protocol import ModelTransform

_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
            torch.ops.aten.linear.default}
_LINEAR = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}      # a Linear layer's matmul
_ATTENTION = {getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name)}
MODES = ("none", "selective", "selective_op", "full")


def _save_matmuls(ctx, op, *args, **kwargs):
    """Selective policy: keep what matmuls produce, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op in _MATMULS else CheckpointPolicy.PREFER_RECOMPUTE


def _every_other_matmul():
    """torchtitan's per-op policy for one block's forward (and, counted apart, its recomputation): keep the
    attention kernel's output and the 1st, 3rd, ... linear matmul; recompute the 2nd, 4th, ... and the rest."""
    count = {False: 0, True: 0}

    def policy(ctx, op, *args, **kwargs):
        if op in _LINEAR:
            count[ctx.is_recompute] += 1
            keep = count[ctx.is_recompute] % 2 == 1
        else:
            keep = op in _ATTENTION
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(blocks, mode: str) -> None:
    """Wrap each block's forward in torch.utils.checkpoint (non-reentrant), in place; names are unchanged."""
    if mode == "none":
        return
    if mode not in MODES:
        raise ValueError(f"activation_checkpointing: unknown mode {mode}")
    blocks = blocks.values() if hasattr(blocks, "values") else blocks
    for block in blocks:
        if getattr(block, "activation_checkpointing", "none") != "none":
            continue                                   # already wrapped (engines may both call this)
        block.activation_checkpointing = mode
        inner = block.forward
        if mode == "full":
            wrapped = functools.partial(checkpoint, inner, use_reentrant=False)
        elif mode == "selective_op":                     # a fresh count for every forward of the block
            wrapped = functools.partial(checkpoint, inner, use_reentrant=False, context_fn=_every_other_matmul)
        else:
            context = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)
            wrapped = functools.partial(checkpoint, inner, use_reentrant=False, context_fn=context)
        block.forward = wrapped


class ActivationCheckpointing(ModelTransform):
    """The model transform: wrap every block of `model.layers` (whole model or its tensor-parallel shard)."""

    name = "activation_checkpointing"

    def __init__(self, mode: str):
        self.mode = mode

    def apply(self, model):
        apply_activation_checkpointing(model.layers, self.mode)
        return model


class _LiveBytes(TorchDispatchMode):
    """Counts bytes of tensor storages created inside the mode that are still alive (peak and now)."""

    def __init__(self, outside=()):
        super().__init__()
        self.outside = {t.untyped_storage().data_ptr() for t in outside}
        self.live = 0
        self.peak = 0
        self.seen: set = set()

    def _free(self, key, nbytes):
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                key = id(storage)
                if key in self.seen or storage.data_ptr() in self.outside:     # e.g. w.t() of a weight
                    continue
                self.seen.add(key)
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def measure_saved_bytes(fn, *args, module=None) -> tuple:
    """Run fn(*args) (a forward returning a loss) and return (loss, bytes still alive from the forward).

    What is alive after the forward is what autograd saved for backward (plus the small loss): the
    activation memory of activation_bytes_per_layer, measured. Storages of `module`'s parameters and of
    the args are not counted (a transposed weight is a view, not an activation).
    """
    outside = [*(module.parameters() if module is not None else ()),
               *(a for a in args if isinstance(a, torch.Tensor))]
    mode = _LiveBytes(outside)
    with mode:
        out = fn(*args)
    return out, mode.live
