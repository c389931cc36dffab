"""Expert-parallel communication: tokens to their experts' ranks and back, by all-to-all with uneven splits.

The ep ranks of a group each hold E/ep experts (rank r: experts [r E/ep, (r+1) E/ep)). After routing, a
rank sorts its T k (token, expert) assignments by expert, so the rows bound for rank 0 come first, then
rank 1's, ...; how many go where is only known after routing, so three all-to-alls move them:

    counts   all_to_all_single(E counts)            rank r learns how many rows each rank sends to each
                                                    of r's experts (E/ep per sender: even splits)
    dispatch all_to_all_single(rows, uneven)        rank r receives [sender 0: its rows for r's experts,
                                                    by expert | sender 1: ... ]
    combine  all_to_all_single(expert outputs)      the reverse splits: every row goes home, in the order
                                                    it left

    ep = 2, E = 4:   rank 0 sends  [e0 e0 e1 | e2 e3 e3]     rank 1 sends  [e1 | e2 e2 e3]
                     rank 0 gets   [e0 e0 e1 | e1]           rank 1 gets   [e2 e3 e3 | e2 e2 e3]
                     (from rank 0 | from rank 1)

`all_to_all` is one autograd function: its backward is the same exchange with the splits swapped (the
gradient of a row goes back to where the row came from), so a block makes three all-to-alls forward
(counts, dispatch, combine) and two backward (combine's and dispatch's reverses). Every rank of the group
calls all of them in the same order, zero-row splits included: NCCL's rule, which strict mode checks on gloo.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def exchange_counts(counts: torch.Tensor, group) -> torch.Tensor:
    """counts (E,) rows this rank sends to each expert -> (ep, E/ep): row s = what rank s sends to each of
    this rank's experts (one all_to_all_single with even splits)."""
    out = torch.empty_like(counts)
    dist.all_to_all_single(out, counts, group=group)
    ep = dist.get_world_size(group)
    return out.view(ep, -1)


def _exchange(x: torch.Tensor, out_splits: list, in_splits: list, group) -> torch.Tensor:
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


class AllToAll(torch.autograd.Function):
    """Rows of x (n, d), in_splits[r] of them to rank r, in rank order -> the rows every rank sent here,
    out_splits[r] from rank r. Backward: the gradient rows go back, splits swapped."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _exchange(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, dy):
        out_splits, in_splits = ctx.splits
        return _exchange(dy, in_splits, out_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, out_splits: list, in_splits: list, group) -> torch.Tensor:
    """Send in_splits[r] rows of x to rank r of `group`; receive out_splits[r] rows from rank r."""
    return AllToAll.apply(x, list(out_splits), list(in_splits), group)
