"""The systems skipped: DDP that all-reduces its buckets only after the backward (no overlap), FSDP that
waits for each gather before issuing the next (no prefetch), clipping by this rank's own norm."""

import torch
import torch.distributed as dist

import solutions.data_parallel as _reference
from solutions.data_parallel import *  # noqa: F403

CONCEPT = "data_parallel"
WRONG = [{"exercise": "3.6", "fails": ["test_bucketed_ddp_overlaps_the_backward"], "message": "launched before",
          "why": "all-reduces every bucket in finish_gradient_synchronization"},
         {"exercise": "3.7", "fails": ["test_fsdp_prefetches_the_next_layer"], "message": "no prefetch",
          "why": "gathers each layer only when it is about to run"},
         {"exercise": "3.8", "fails": ["test_clip_grad_norm_sharded_matches_torch"], "message": "total norm",
          "why": "clips each rank's shards by their own norm"}]


class BucketedDDP(_reference.BucketedDDP):
    def _grad_ready(self, param):
        pass

    def finish_gradient_synchronization(self):
        for i, bucket in enumerate(self.buckets):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            self.pending.append((i, flat, dist.all_reduce(flat, group=self.group, async_op=True)))
        super().finish_gradient_synchronization()


def fsdp_forward_backward(shards, shapes, x, target, apply_layer, group=None):
    n = dist.get_world_size(group)

    def gathered(i):
        full = torch.empty(shards[i].numel() * n)
        dist.all_gather_into_tensor(full, shards[i], group=group)
        return full

    inputs, h = [], x
    with torch.no_grad():
        for i in range(len(shards)):
            inputs.append(h)
            h = apply_layer(gathered(i), shapes[i], h)
    out = h.detach().requires_grad_()
    loss = ((out - target) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, out)
    grads = [None] * len(shards)
    for i in reversed(range(len(shards))):
        full = gathered(i).requires_grad_()
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
    total = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grad_shards)))
    scale = min(1.0, max_norm / (total + 1e-6))
    for g in grad_shards:
        g.mul_(scale)
    return total
