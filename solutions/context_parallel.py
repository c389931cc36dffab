"""Reference solutions for the context-parallel exercises (lab 15). Same functions as
labs/exercises/context_parallel.py.

c ranks share one sequence cut in 2c equal chunks; rank r holds chunk r and chunk 2c - 1 - r (head-tail), so
a causal mask gives every rank the same attention work. Every op but attention is per token; attention
all-gathers K and V (one collective, in rank order) and masks on global positions (key <= query); its
backward reduce-scatters dK and dV, because every rank's queries read every rank's keys.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def load_balanced_chunks(seq_len: int, cp: int, rank: int) -> list:
    """Exercise 15.1: [(start, end), (start, end)] of the two chunks rank `rank` of `cp` holds (head-tail)."""
    if not 0 <= rank < cp:
        raise ValueError(f"rank {rank} is not a rank of cp {cp}")
    n = seq_len // (2 * cp)
    if n < 1 or seq_len % (2 * cp):
        raise ValueError(f"2 x cp = {2 * cp} does not divide seq_len {seq_len}")
    return [(rank * n, (rank + 1) * n), ((2 * cp - 1 - rank) * n, (2 * cp - rank) * n)]


def shard_sequence(x, cp: int, rank: int, dim: int = 1):
    """Exercise 15.1: rank `rank`'s part of a whole-sequence tensor: its two chunks along `dim`, concatenated."""
    chunks = load_balanced_chunks(x.shape[dim], cp, rank)
    return torch.cat([x.narrow(dim, a, b - a) for a, b in chunks], dim)


def causal_mask(q_positions, seq_len: int):
    """Exercise 15.2: bool (len(q_positions), seq_len), True where key position <= query position."""
    keys = torch.arange(seq_len, device=q_positions.device)
    return q_positions.reshape(-1, 1) >= keys.reshape(1, -1)


def cp_gather_bytes(b: int, s: int, n_kv_heads: int, head_dim: int, tp: int, cp: int,
                    bytes_per_element: int = 2) -> tuple:
    """Exercise 15.3: (bytes the all-gather returns, bytes a rank receives from the others) per block."""
    if min(b, s, n_kv_heads, head_dim, tp, cp, bytes_per_element) < 1:
        raise ValueError("every argument must be positive")
    if n_kv_heads % tp:
        raise ValueError(f"tp {tp} does not divide n_kv_heads {n_kv_heads}")
    gathered = 2 * b * s * (n_kv_heads // tp) * head_dim * bytes_per_element
    return gathered, gathered * (cp - 1) / cp


def _key_positions(seq_len: int, cp: int, device) -> torch.Tensor:
    """Global positions of the gathered keys, in rank order: rank 0's two chunks, then rank 1's, ..."""
    return torch.cat([torch.arange(a, b, device=device)
                      for r in range(cp) for a, b in load_balanced_chunks(seq_len, cp, r)])


class _GatherKV(torch.autograd.Function):
    """All-gather along dim 2 in rank order; backward: reduce-scatter (sum over ranks, keep my block)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        chunks = [c.contiguous() for c in grad.chunk(world, dim=2)]
        out = torch.empty_like(chunks[dist.get_rank(ctx.group)])
        dist.reduce_scatter(out, chunks, group=ctx.group)
        return out, None


def gathered_attention(q, k, v, positions, group=None):
    """Exercise 15.4: causal attention of this rank's queries over the K and V gathered from every rank."""
    cp = dist.get_world_size(group)
    kv_heads = k.shape[1]
    kv = _GatherKV.apply(torch.cat([k, v], dim=1), group)
    k_all, v_all = kv[:, :kv_heads], kv[:, kv_heads:]
    seq_len = kv.shape[2]
    groups = q.shape[1] // kv_heads
    k_all = k_all.repeat_interleave(groups, dim=1)
    v_all = v_all.repeat_interleave(groups, dim=1)
    mask = positions.reshape(-1, 1) >= _key_positions(seq_len, cp, q.device).reshape(1, -1)
    scores = q @ k_all.mT / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v_all
