"""Context-parallel communication: each rank's chunks of a sequence, and the all-gather of K and V along it.

The c ranks of a cp group share one sequence cut in 2c equal chunks; rank r holds chunk r and chunk
2c - 1 - r, one after the other (simulator/spec.py `cp_chunks`, torch's head-tail load balancer), so under
a causal mask every rank has the same attention work:

    sequence (c = 2)      | 0 | 1 | 2 | 3 |          rank 0 holds [0 | 3]     rank 1 holds [1 | 2]

Attention needs the keys and values of the whole sequence. `gather_sequence` is one autograd function:

    forward:   (.., s/c, ..) --all-gather--> rank order [0 3 | 1 2] --reorder--> [0 1 2 3]   (.., s, ..)
    backward:  (.., s, ..) dK --reorder--> rank order [0 3 | 1 2] --reduce-scatter--> (.., s/c, ..)

The backward is a reduce-scatter because every rank's queries read every rank's keys: the gradient of
rank r's keys is the sum of what each rank's attention sends back for them. K and V travel in one tensor
(concatenated along the heads), so a block makes one all-gather forward and one reduce-scatter backward,
of b s (2 kv_dim / t) elements on one tensor-parallel rank; with grouped-query attention (kv_dim << dim)
that is why Llama 3 gathers K and V instead of passing them round a ring.

All-gather and reduce-scatter are NCCL collectives (no point-to-point), so strict mode's rules hold.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from simulator import spec


def local_positions(seq_len: int, cp: int, cp_rank: int, device=None) -> torch.Tensor:
    """Global positions of the tokens a cp rank holds, in its order: [chunk r, chunk 2c - 1 - r]."""
    return torch.cat([torch.arange(a, b, device=device) for a, b in spec.cp_chunks(seq_len, cp, cp_rank)])


def shard_sequence(x: torch.Tensor, cp: int, cp_rank: int, dim: int = 1) -> torch.Tensor:
    """A cp rank's part of a whole-sequence tensor: its two chunks along `dim`, concatenated."""
    if cp == 1:
        return x
    return torch.cat([x.narrow(dim, a, b - a) for a, b in spec.cp_chunks(x.shape[dim], cp, cp_rank)], dim)


def unshard_sequence(parts: list, dim: int = 1) -> torch.Tensor:
    """The whole sequence from every cp rank's part (parts[r] = rank r's), in global order."""
    cp = len(parts)
    if cp == 1:
        return parts[0]
    halves = [p.chunk(2, dim) for p in parts]
    return torch.cat([halves[j][0] if j < cp else halves[2 * cp - 1 - j][1] for j in range(2 * cp)], dim)


def _all_gather(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return unshard_sequence(parts, dim)


def _reduce_scatter(dy: torch.Tensor, group, dim: int) -> torch.Tensor:
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    chunks = [shard_sequence(dy, cp, r, dim).contiguous() for r in range(cp)]
    out = torch.empty_like(chunks[rank])
    dist.reduce_scatter(out, chunks, group=group)
    return out


class GatherSequence(torch.autograd.Function):
    """All-gather along the sequence, in global order; backward: reduce-scatter of the gradient.

    forward:  x_r (.., s/c, ..) on each rank r  -->  X (.., s, ..) on every rank
    backward: dX_r, each rank's gradient of the whole X  -->  sum_r dX_r, rank r keeping its chunks
    """

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, dy):
        return _reduce_scatter(dy, ctx.group, ctx.dim), None, None


def gather_sequence(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    """The whole sequence of `x` (each rank's chunks gathered over `group`, in global order)."""
    if group is None or dist.get_world_size(group) == 1:
        return x
    return GatherSequence.apply(x, group, dim)
