"""Reference solutions for lab 03, data_parallel (labs/exercises/data_parallel.py has the exercises)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def zero_memory_per_gpu(n_params, dp, zero_stage, bytes_weights=2.0, bytes_grads=2.0, bytes_optimizer=12.0):
    """Exercise 3.1."""
    if zero_stage not in (0, 1, 2, 3) or dp < 1:
        raise ValueError(f"zero_stage must be 0-3 and dp >= 1, got {zero_stage}, {dp}")
    out = {"params": n_params * bytes_weights / (dp if zero_stage >= 3 else 1),
           "grads": n_params * bytes_grads / (dp if zero_stage >= 2 else 1),
           "optimizer": n_params * bytes_optimizer / (dp if zero_stage >= 1 else 1)}
    out["total"] = sum(out.values())
    return out


def dp_bytes_per_step(n_params, dp, zero_stage, bytes_per_element=2.0):
    """Exercise 3.2."""
    if zero_stage not in (0, 1, 2, 3) or dp < 1:
        raise ValueError(f"zero_stage must be 0-3 and dp >= 1, got {zero_stage}, {dp}")
    one_pass = (dp - 1) / dp * n_params * bytes_per_element          # a ring reduce-scatter or all-gather
    return (3 if zero_stage == 3 else 2) * one_pass


def bucketed_step_time(forward_s, backward_s, comm_s, overlap=True):
    """Exercise 3.3."""
    if len(backward_s) != len(comm_s):
        raise ValueError("one communication time per bucket")
    backward_end = forward_s + sum(backward_s)
    ready, t = [], forward_s
    for b in backward_s:
        t += b
        ready.append(t if overlap else backward_end)
    stream = 0.0
    for r, c in zip(ready, comm_s):
        stream = max(stream, r) + c
    return max(backward_end, stream)


def zero2_sgd_step(param, grad, momentum_shard, lr, momentum=0.9, group=None):
    """Exercise 3.4: reduce-scatter (average), update the own shard, all-gather."""
    import torch
    import torch.distributed as dist

    n, r = dist.get_world_size(group), dist.get_rank(group)
    shard_g = torch.empty_like(torch.tensor_split(grad, n)[r])
    dist.reduce_scatter(shard_g, [c.contiguous() for c in torch.tensor_split(grad.detach(), n)], group=group)
    shard_g /= n
    with torch.no_grad():
        shard_p = torch.tensor_split(param.data, n)[r]
        momentum_shard.mul_(momentum).add_(shard_g)
        shard_p.add_(momentum_shard, alpha=-lr)
        pieces = [torch.empty_like(c) for c in torch.tensor_split(param.data, n)]
        dist.all_gather(pieces, shard_p.clone(), group=group)
        param.data.copy_(torch.cat(pieces))
    return param


def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """Exercise 3.5."""
    import torch

    b1, b2 = betas
    with torch.no_grad():
        param.mul_(1 - lr * weight_decay)
        exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        c1, c2 = 1 - b1 ** step, 1 - b2 ** step
        param.addcdiv_(exp_avg / c1, (exp_avg_sq / c2).sqrt().add_(eps), value=-lr)


class BucketedDDP(torch.nn.Module):
    """Exercise 3.6: data parallelism whose gradient buckets are all-reduced while the backward runs."""

    def __init__(self, module, bucket_size_mb: float, group=None):
        super().__init__()
        self.module, self.group = module, group
        self.world = dist.get_world_size(group)
        root = dist.get_global_rank(group, 0) if group is not None else 0
        with torch.no_grad():
            for p in module.parameters():                      # every replica starts from rank 0's weights
                dist.broadcast(p.data, root, group=group)
        limit = bucket_size_mb * 2**20
        self.buckets, size = [], 0
        for p in reversed([p for p in module.parameters() if p.requires_grad]):
            nbytes = p.numel() * p.element_size()
            if not self.buckets or size + nbytes > limit:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.ready = [0] * len(self.buckets)
        self.pending = []                                       # (bucket, flat gradients, work handle)
        for p in self.bucket_of:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _grad_ready(self, param) -> None:
        i = self.bucket_of[param]
        self.ready[i] += 1
        if self.ready[i] == len(self.buckets[i]):                # the bucket's last gradient: launch it
            flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[i]])
            self.pending.append((i, flat, dist.all_reduce(flat, group=self.group, async_op=True)))

    def finish_gradient_synchronization(self) -> None:
        for i, flat, work in self.pending:
            work.wait()
            flat /= self.world
            offset = 0
            for p in self.buckets[i]:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self.pending, self.ready = [], [0] * len(self.buckets)


def fsdp_forward_backward(shards, shapes, x, target, apply_layer, group=None):
    """Exercise 3.7: gather each layer just before it runs (the next one in flight), free it after, recompute
    it in the backward and reduce-scatter its flat gradient."""
    n = dist.get_world_size(group)
    count = len(shards)

    def gather(i):
        full = torch.empty(shards[i].numel() * n, dtype=shards[i].dtype)
        return full, dist.all_gather_into_tensor(full, shards[i], group=group, async_op=True)

    inputs, h = [], x
    nxt = gather(0)
    with torch.no_grad():                                        # the backward recomputes: no graph here
        for i in range(count):
            full, work = nxt
            work.wait()
            nxt = gather(i + 1) if i + 1 < count else None       # prefetch the next layer
            inputs.append(h)
            h = apply_layer(full, shapes[i], h)
            del full                                             # free: at most two layers held
    out = h.detach().requires_grad_()
    loss = ((out - target) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, out)
    grads = [None] * count
    nxt = gather(count - 1)
    for i in reversed(range(count)):
        full, work = nxt
        work.wait()
        nxt = gather(i - 1) if i > 0 else None
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
        del full, g_full, y
    return float(loss), grads


def clip_grad_norm_sharded(grad_shards, max_norm, group=None):
    """Exercise 3.8: one all-reduce of the local sum of squares gives the global norm."""
    local = torch.zeros((), dtype=torch.float64)
    for g in grad_shards:
        local += g.double().pow(2).sum()
    dist.all_reduce(local, group=group)
    total = float(local.sqrt())
    scale = min(1.0, max_norm / (total + 1e-6))
    if scale < 1.0:
        for g in grad_shards:
            g.mul_(scale)
    return total
