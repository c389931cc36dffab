"""Reference solutions for lab 03, data_parallel (labs/exercises/data_parallel.py has the exercises)."""

from __future__ import annotations


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
