"""Reference solutions for the tensor-parallel exercises (lab 04). Same functions as
labs/exercises/tensor_parallel.py.

A Megatron block on t ranks: column-parallel first matmul (output features split), row-parallel second
(input features split), one all-reduce forward and one backward per pair; 4 all-reduces of A = b s h
elements per block and micro-batch. Sequence parallelism swaps each all-reduce for a reduce-scatter plus an
all-gather along the sequence: the same bytes, and the regions between hold s/t tokens.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def tp_block_comm_bytes(b: int, s: int, h: int, t: int, bytes_per_element: int = 2,
                        sequence_parallel: bool = False) -> float:
    """Exercise 4.1: bytes one rank sends in one block's forward and backward (ring collectives).

    4 all-reduces of A = b s h elements, each 2 (t-1)/t A e; or 4 all-gathers + 4 reduce-scatters of
    (t-1)/t A e each with sequence parallelism: the same total.
    """
    if min(b, s, h, t, bytes_per_element) < 1:
        raise ValueError("b, s, h, t and bytes_per_element must be positive")
    a = b * s * h * bytes_per_element
    if sequence_parallel:
        return 4 * (t - 1) / t * a + 4 * (t - 1) / t * a
    return 4 * 2 * (t - 1) / t * a


def column_parallel_linear(x, weight, rank: int, t: int):
    """Exercise 4.2: rank `rank`'s output of y = x W^T with W (out, in) split by output features (rows of
    nn.Linear's weight): x @ W_r^T, shape (..., out / t)."""
    out = weight.shape[0]
    if out % t:
        raise ValueError(f"{out} output features do not split over {t} ranks")
    return x @ weight.chunk(t, 0)[rank].T


def row_parallel_linear(x_shard, weight, rank: int, t: int):
    """Exercise 4.3: rank `rank`'s partial sum of y = x W^T with W (out, in) split by input features:
    x_r @ W[:, r in/t : (r+1) in/t]^T, shape (..., out). The full output is the sum over ranks."""
    n_in = weight.shape[1]
    if n_in % t:
        raise ValueError(f"{n_in} input features do not split over {t} ranks")
    return x_shard @ weight.chunk(t, 1)[rank].T


def tp_activation_bytes(s: int, b: int, h: int, a: int, t: int = 1, sequence_parallel: bool = False) -> float:
    """Exercise 4.4: activation bytes of one transformer layer (16-bit activations, no recomputation),
    Korthikanti et al. 2022, Table 2:

        no parallelism  s b h (34 + 5 a s / h)
        tensor parallel s b h (10 + 24 / t + 5 a s / (h t))
        TP + sequence   s b h / t (34 + 5 a s / h)
    """
    base = s * b * h
    if sequence_parallel:
        return base / t * (34 + 5 * a * s / h)
    return base * (10 + 24 / t + 5 * a * s / (h * t))


def vocab_parallel_cross_entropy(logits, targets, vocab_start: int, group=None) -> tuple:
    """Exercise 4.5: per-token cross-entropy and the gradient of its mean from logit shards.

    logits: (N, V/t) this rank's shard of the vocabulary, [vocab_start, vocab_start + V/t); targets: (N,)
    global token ids. Three all-reduces of N numbers: the max (for stability), the sum of exponentials and
    the target's logit (only its owner contributes). Returns (loss (N,), dlogits (N, V/t)) with
    dlogits = (softmax - onehot) / N, the gradient of loss.mean() with respect to this shard.
    """
    import torch
    import torch.distributed as dist

    z = logits.detach().float()
    m = z.max(dim=-1).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    z = z - m.unsqueeze(-1)
    exp = z.exp()
    total = exp.sum(dim=-1)
    dist.all_reduce(total, group=group)
    local = targets - vocab_start
    mine = (local >= 0) & (local < z.shape[-1])
    local = local.masked_fill(~mine, 0)
    picked = z.gather(-1, local.unsqueeze(-1)).squeeze(-1) * mine
    dist.all_reduce(picked, group=group)
    loss = total.log() - picked
    grad = exp / total.unsqueeze(-1)
    grad[torch.arange(z.shape[0]), local] -= mine.to(grad.dtype)
    return loss, grad / z.shape[0]


class _CopyToRegion(torch.autograd.Function):
    """f: forward identity; backward all-reduce (sum) of the gradient over the group."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromRegion(torch.autograd.Function):
    """g: forward all-reduce (sum); backward identity."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp_region(x, group=None):
    """Exercise 4.6: Megatron's f (identity forward, all-reduce backward)."""
    return _CopyToRegion.apply(x, group)


def reduce_from_tp_region(x, group=None):
    """Exercise 4.6: Megatron's g (all-reduce forward, identity backward)."""
    return _ReduceFromRegion.apply(x, group)


def tp_mlp(x, w1_shard, w2_shard, group=None):
    """Exercise 4.7: f, column-parallel w1, GELU, row-parallel w2, g."""
    h = torch.nn.functional.gelu(copy_to_tp_region(x, group) @ w1_shard.T)
    return reduce_from_tp_region(h @ w2_shard.T, group)
