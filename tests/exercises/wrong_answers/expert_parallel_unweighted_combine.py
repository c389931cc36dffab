"""The combine adds the k experts' outputs without their routing weights: the right rows cross the wire,
each token gets the plain sum, and the router gets no gradient through the layer."""

import torch
import torch.distributed as dist

import solutions.expert_parallel as _s
from solutions.expert_parallel import *  # noqa: F403

CONCEPT = "expert_parallel"
WRONG = [{"exercise": "16.5", "fails": ["test_expert_parallel_moe_matches_the_dense_layer",
                                        "test_expert_parallel_moe_gradients"],
          "message": "off by", "why": "combine without the routing weights"}]


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
    rows = _s._AllToAll.apply(tokens[order // k], out_splits, in_splits, group)
    expert_of = torch.arange(n_local).repeat(ep).repeat_interleave(received.flatten())
    out = torch.zeros_like(rows)
    for j, expert in enumerate(experts):
        mine = (expert_of == j).nonzero(as_tuple=True)[0]
        out = out.index_add(0, mine, expert(rows[mine]))
    back = _s._AllToAll.apply(out, in_splits, out_splits, group)
    return torch.zeros_like(tokens).index_add(0, order // k, back)
