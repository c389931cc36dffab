"""Plain all_to_all_single calls, outside autograd: the forward is right, the backward exchanges nothing, so
the tokens get no gradient through their experts and the experts none at all."""

import torch
import torch.distributed as dist

from solutions.expert_parallel import *  # noqa: F403

CONCEPT = "expert_parallel"
WRONG = [{"exercise": "16.5", "fails": ["test_expert_parallel_moe_gradients",
                                        "test_expert_parallel_moe_backward_is_two_all_to_alls"],
          "message": "rank", "why": "the row exchanges have no backward all-to-all"}]


def _exchange(x, out_splits, in_splits, group):
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x.detach().contiguous(), out_splits, in_splits, group=group)
    return out


def expert_parallel_moe(tokens, index, weights, experts, n_experts, group=None):
    ep, k = dist.get_world_size(group), index.shape[1]
    n_local = n_experts // ep
    flat = index.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    received = received.view(ep, n_local)
    in_splits, out_splits = counts.view(ep, n_local).sum(1).tolist(), received.sum(1).tolist()
    rows = _exchange(tokens[order // k], out_splits, in_splits, group)
    expert_of = torch.arange(n_local).repeat(ep).repeat_interleave(received.flatten())
    out = torch.zeros_like(rows)
    for j, expert in enumerate(experts):
        mine = (expert_of == j).nonzero(as_tuple=True)[0]
        out = out.index_add(0, mine, expert(rows[mine]))
    back = _exchange(out, in_splits, out_splits, group)
    weighted = back * weights.flatten()[order].unsqueeze(-1)
    return torch.zeros_like(tokens).index_add(0, order // k, weighted)
