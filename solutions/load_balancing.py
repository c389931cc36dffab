"""Reference solutions for labs/exercises/load_balancing.py (lab 09)."""

from __future__ import annotations

import heapq
import math


def proportional_split(total, speeds):
    if total < 0 or not speeds or any(s <= 0 for s in speeds):
        raise ValueError("total must be >= 0 and speeds positive")
    s = float(sum(speeds))
    quota = [total * v / s for v in speeds]
    shares = [math.floor(q) for q in quota]
    left = total - sum(shares)
    for i in sorted(range(len(speeds)), key=lambda i: (-(quota[i] - shares[i]), i))[:left]:
        shares[i] += 1
    return shares


def policy_step_time(policy, seconds_per_seq, global_batch, backup=1):
    n = len(seconds_per_seq)
    if policy == "none":
        return global_batch / n * max(seconds_per_seq), global_batch
    if policy == "dynamic_batch":
        return global_batch / sum(1 / t for t in seconds_per_seq), global_batch
    if policy == "backup_workers":
        if not 0 <= backup < n:
            raise ValueError("backup must be in [0, N)")
        finish = sorted(global_batch / n * t for t in seconds_per_seq)
        return finish[n - backup - 1], global_batch * (n - backup) / n
    raise ValueError(f"unknown policy {policy!r}")


def assign_by_cost(lengths, n_ranks):
    if n_ranks < 1:
        raise ValueError("n_ranks must be >= 1")
    heap = [(0, r) for r in range(n_ranks)]
    ranks = [[] for _ in range(n_ranks)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, r = heapq.heappop(heap)
        ranks[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return ranks


def least_loaded_dispatch(arrivals, works, speeds):
    free = [0.0] * len(speeds)
    out = []
    for t, w in zip(arrivals, works):
        ends = [max(t, free[j]) + w / speeds[j] for j in range(len(speeds))]
        j = min(range(len(speeds)), key=lambda j: (ends[j], j))
        free[j] = ends[j]
        out.append(ends[j] - t)
    return out


def weighted_gradient_all_reduce(grad, n_local, global_batch, group=None):
    import torch
    import torch.distributed as dist

    out = grad * (n_local / global_batch) if n_local else torch.zeros_like(grad)
    dist.all_reduce(out, group=group)
    return out
