"""Too much held or sent: DDP with one all-reduce per parameter (no buckets), FSDP that keeps every layer
it gathered, clipping that all-gathers the gradient shards to take the norm."""

import torch
import torch.distributed as dist

import solutions.data_parallel as _reference
from solutions.data_parallel import *  # noqa: F403

CONCEPT = "data_parallel"
WRONG = [{"exercise": "3.6", "fails": ["test_bucketed_ddp_all_reduces_buckets"], "message": "all-reduces of",
          "why": "one all-reduce per parameter"},
         {"exercise": "3.7", "fails": ["test_fsdp_frees_what_it_gathered"], "message": "free each layer",
          "why": "keeps every gathered layer until the end"},
         {"exercise": "3.8", "fails": ["test_clip_grad_norm_sharded_sends_one_number"], "message": "one all-reduce",
          "why": "all-gathers the gradient shards (all_gather_object) to compute the norm"}]


class BucketedDDP(_reference.BucketedDDP):
    def __init__(self, module, bucket_size_mb, group=None):
        super().__init__(module, 0.0, group)           # every parameter alone in its bucket


def fsdp_forward_backward(shards, shapes, x, target, apply_layer, group=None):
    n = dist.get_world_size(group)
    fulls = []
    for s in shards:
        full = torch.empty(s.numel() * n)
        dist.all_gather_into_tensor(full, s, group=group)
        fulls.append(full)
    inputs, h = [], x
    with torch.no_grad():
        for i in range(len(shards)):
            inputs.append(h)
            h = apply_layer(fulls[i], shapes[i], h)
    out = h.detach().requires_grad_()
    loss = ((out - target) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, out)
    grads = [None] * len(shards)
    for i in reversed(range(len(shards))):
        full = torch.empty(shards[i].numel() * n)
        dist.all_gather_into_tensor(full, shards[i], group=group)
        fulls.append(full)
        full.requires_grad_()
        inp = inputs[i].detach().requires_grad_(i > 0)
        y = apply_layer(full, shapes[i], inp)
        if i > 0:
            grad, g_full = torch.autograd.grad(y, (inp, full), grad)
        else:
            (g_full,) = torch.autograd.grad(y, (full,), grad)
        shard = torch.empty_like(shards[i])
        dist.reduce_scatter_tensor(shard, g_full, group=group)
        grads[i] = shard / n
    return float(loss), grads


def clip_grad_norm_sharded(grad_shards, max_norm, group=None):
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, [g.detach() for g in grad_shards], group=group)
    total = float(torch.sqrt(sum(g.double().pow(2).sum() for shards in everyone for g in shards)))
    scale = min(1.0, max_norm / (total + 1e-6))
    for g in grad_shards:
        g.mul_(scale)
    return total
