"""Reference solutions for labs/exercises/sync_async.py (lab 08)."""

from __future__ import annotations


def bsp_step_time(compute_s, comm_s):
    if not compute_s:
        raise ValueError("no workers")
    slowest = max(compute_s)
    n = len(compute_s)
    waiting = 1 - sum(compute_s) / (n * slowest) if slowest > 0 else 0.0
    return slowest + comm_s, waiting


def asp_staleness(compute_s):
    rates = [1 / c for c in compute_s]
    total = sum(rates)
    return [c * (total - r) for c, r in zip(compute_s, rates)]


def ssp_may_proceed(clocks, worker, bound, finished=()):
    if bound is None:
        return True
    others = [c for w, c in clocks.items() if w != worker and w not in finished]
    if not others:
        return True
    return clocks[worker] - min(others) <= bound


def local_sgd_average(anchor, replicas, buffer, outer_lr=1.0, momentum=0.0):
    mean = replicas[0] * 1
    for x in replicas[1:]:
        mean = mean + x
    mean = mean / len(replicas)
    delta = anchor - mean
    new_buffer = momentum * buffer + delta
    step = delta + momentum * new_buffer if momentum else delta
    return anchor - outer_lr * step, new_buffer


def diloco_outer_step(params, anchor, buffer, outer_lr, momentum, group=None):
    import torch.distributed as dist

    mean = params.detach().clone()
    dist.all_reduce(mean, group=group)
    mean /= dist.get_world_size(group)
    delta = anchor - mean
    buffer.mul_(momentum).add_(delta)
    step = delta + momentum * buffer if momentum else delta
    anchor.sub_(outer_lr * step)
    params.copy_(anchor)
