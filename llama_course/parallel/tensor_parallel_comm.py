"""Tensor-parallel communication: the four autograd functions a Megatron layer is built from.

Tensor parallelism (tensor_parallel.py) splits one matmul over the t ranks of a tensor-parallel group. Every
split layer enters and leaves the "parallel region" through one of these functions, and each one is the
conjugate of another: what forward does, backward does to the gradient of the other one.

    no sequence parallelism                      sequence parallelism (Korthikanti et al. 2022)
    f  = copy_to_tp:   fwd identity              gather_from_sp:  fwd all-gather along s
                       bwd all-reduce                             bwd reduce-scatter along s
    g  = reduce_from_tp: fwd all-reduce          reduce_scatter_to_sp: fwd reduce-scatter along s
                         bwd identity                                bwd all-gather along s

    x ──f──> [ x A_1 | x A_2 ]  column-parallel (each rank its columns)  ──> row-parallel Y_i B_i ──g──> sum
    (b, s, h)                                                                            (b, s, h)

An all-reduce is a reduce-scatter followed by an all-gather, so sequence parallelism sends the same bytes
as f/g, 2 (t-1)/t x b s h x bytes per element per block and direction on a ring, while the element-wise
work between the regions (norms, dropout, residual adds) and its stored activations shrink by t.

Seed question 9 (which parallel strategy, and how to choose it): TP costs two all-reduces of the whole
activation per block forward and two backward, on the critical path, so it stays inside a node (NVLink):
`llama-course simulate configs/... --set parallel.tp=8` shows what it costs across nodes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SEQ_DIM = 1                     # activations are (batch, seq, hidden): sequence parallelism splits dim 1


def _size(group) -> int:
    return dist.get_world_size(group) if group is not None else 1


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if _size(group) == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def _all_gather_seq(x: torch.Tensor, group) -> torch.Tensor:
    t = _size(group)
    if t == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(t)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=SEQ_DIM)


def _reduce_scatter_seq(x: torch.Tensor, group) -> torch.Tensor:
    t = _size(group)
    if t == 1:
        return x
    chunks = [c.contiguous() for c in x.chunk(t, dim=SEQ_DIM)]
    out = torch.empty_like(chunks[0])
    dist.reduce_scatter(out, chunks, group=group)
    return out


def _split_seq(x: torch.Tensor, group) -> torch.Tensor:
    t = _size(group)
    if t == 1:
        return x
    return x.chunk(t, dim=SEQ_DIM)[dist.get_rank(group)].contiguous()


class CopyToTP(torch.autograd.Function):
    """f: enter a tensor-parallel region with a replicated input.

    forward:  y = x                        (every rank already holds all of x)
    backward: dx = sum_ranks dy_r          (each rank's columns contributed a part of dL/dx: all-reduce)
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, dy):
        return _all_reduce(dy.clone(), ctx.group), None


class ReduceFromTP(torch.autograd.Function):
    """g: leave a tensor-parallel region whose ranks hold partial sums (row-parallel output).

    forward:  y = sum_ranks x_r            (all-reduce)
    backward: dx_r = dy                    (the sum's gradient is the same for every term)
    """

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, dy):
        return dy, None


class GatherFromSP(torch.autograd.Function):
    """Sequence parallel f: rank r holds tokens [r s/t, (r+1) s/t); the matmuls need all s.

    forward:  (b, s/t, h) --all-gather along s--> (b, s, h)
    backward: (b, s, h) --reduce-scatter along s--> (b, s/t, h)  (sum the ranks' partial dL/dx, keep my tokens)
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_seq(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _reduce_scatter_seq(dy, ctx.group), None


class ReduceScatterToSP(torch.autograd.Function):
    """Sequence parallel g: row-parallel partial sums, reduced and split along the sequence at once.

    forward:  (b, s, h) partial --reduce-scatter along s--> (b, s/t, h) full sums of my tokens
    backward: (b, s/t, h) --all-gather along s--> (b, s, h)
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter_seq(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _all_gather_seq(dy, ctx.group), None


class SplitToSP(torch.autograd.Function):
    """Keep this rank's slice of the sequence of a replicated tensor (GPT's learned positions).

    forward:  (b, s, h) --> (b, s/t, h), my tokens;  backward: all-gather along s (other slices' grads
    are computed by their own ranks).
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_seq(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _all_gather_seq(dy, ctx.group), None


def copy_to_tp(x, group):
    return CopyToTP.apply(x, group)


def reduce_from_tp(x, group):
    return ReduceFromTP.apply(x, group)


def gather_from_sp(x, group):
    return GatherFromSP.apply(x, group)


def reduce_scatter_to_sp(x, group):
    return ReduceScatterToSP.apply(x, group)


def split_to_sp(x, group):
    return SplitToSP.apply(x, group)


def enter_region(x, group, sequence_parallel: bool):
    """Into a column-parallel layer: f, or the all-gather of sequence parallelism."""
    return gather_from_sp(x, group) if sequence_parallel else copy_to_tp(x, group)


def exit_region(x, group, sequence_parallel: bool):
    """Out of a row-parallel layer: g, or the reduce-scatter of sequence parallelism."""
    return reduce_scatter_to_sp(x, group) if sequence_parallel else reduce_from_tp(x, group)


def all_reduce_gradients(params, group, average: bool = True) -> None:
    """Sum (or average) the .grad of params over a group, flattened into one buffer: one collective.

    Used for the data-parallel gradient mean of the model-parallel engines (dp group) and for the
    replicated parameters of sequence parallelism (norm weights see only s/t tokens: tp group).
    """
    grads = [getattr(p.grad, "_local_tensor", p.grad) for p in params if p.grad is not None]   # DTensor: shard
    size = _size(group)
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    if average:
        flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
