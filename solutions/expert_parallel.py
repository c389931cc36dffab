"""Reference solutions for the expert-parallel exercises (lab 16). Same functions as
labs/exercises/expert_parallel.py.

A mixture-of-experts block routes each token to k of E expert MLPs (top-k router logits, softmax over the k
chosen: Mixtral) and adds a load-balancing loss E sum_e f_e P_e (Switch). Expert parallelism keeps experts
[r E/ep, (r+1) E/ep) on ep rank r and moves the token copies instead: one all-to-all of the per-expert counts,
one of the rows (dispatch), one back (combine); backward, the two row exchanges reversed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def route(logits, k: int) -> tuple:
    """Exercise 16.1: (expert indices (T, k), weights (T, k)): the top-k logits, softmax over the k chosen."""
    top, index = logits.topk(k)                                 # largest first, along the experts
    return index, torch.softmax(top, dim=1)


def load_balancing_loss(logits, index, n_experts: int):
    """Exercise 16.2: E sum_e f_e P_e; f_e the share of the T k assignments, P_e the mean router probability."""
    counts = torch.bincount(index.flatten(), minlength=n_experts).to(logits.dtype)
    f = counts / index.numel()
    p = torch.softmax(logits, dim=1).mean(0)
    return n_experts * (f * p).sum()


def send_splits(index, n_experts: int, ep: int) -> list:
    """Exercise 16.3: how many (token, expert) rows this rank sends to each of the ep ranks."""
    if ep < 1 or n_experts % ep:
        raise ValueError(f"ep {ep} does not divide n_experts {n_experts}")
    counts = torch.bincount(index.flatten(), minlength=n_experts)
    return [int(c) for c in counts.view(ep, -1).sum(1)]


def dispatch_bytes(b: int, s: int, k: int, dim: int, tp: int = 1, cp: int = 1, bytes_per_element: int = 2) -> int:
    """Exercise 16.4: bytes one GPU hands one dispatch all-to-all per block and micro-batch: b s/cp k dim / tp."""
    if min(b, s, k, dim, tp, cp, bytes_per_element) < 1:
        raise ValueError("every argument must be positive")
    if s % cp or dim % tp:
        raise ValueError("cp must divide s and tp must divide dim")
    return b * (s // cp) * k * (dim // tp) * bytes_per_element


class _AllToAll(torch.autograd.Function):
    """Rows in_splits[r] to rank r, out_splits[r] from rank r; backward: the same with the splits swapped."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, dy):
        out_splits, in_splits = ctx.splits
        dx = dy.new_empty((sum(in_splits),) + tuple(dy.shape[1:]))
        dist.all_to_all_single(dx, dy.contiguous(), in_splits, out_splits, group=ctx.group)
        return dx, None, None, None


def expert_parallel_moe(tokens, index, weights, experts, n_experts: int, group=None):
    """Exercise 16.5: sum_j w_j expert_{i_j}(x_t) for this rank's tokens, the experts spread over the group."""
    ep, k = dist.get_world_size(group), index.shape[1]
    n_local = n_experts // ep
    flat = index.flatten()
    order = torch.argsort(flat, stable=True)                    # by expert, so by owner rank
    counts = torch.bincount(flat, minlength=n_experts)
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)       # (ep, E/ep): sender x my expert
    received = received.view(ep, n_local)
    in_splits = counts.view(ep, n_local).sum(1).tolist()
    out_splits = received.sum(1).tolist()
    rows = _AllToAll.apply(tokens[order // k], out_splits, in_splits, group)
    expert_of = torch.arange(n_local).repeat(ep).repeat_interleave(received.flatten())
    out = torch.zeros_like(rows)
    for j, expert in enumerate(experts):
        mine = (expert_of == j).nonzero().squeeze(1)
        out = out.index_add(0, mine, expert(rows[mine]))
    back = _AllToAll.apply(out, in_splits, out_splits, group)
    weighted = back * weights.flatten()[order][:, None]
    return torch.zeros_like(tokens).index_add(0, order // k, weighted)
