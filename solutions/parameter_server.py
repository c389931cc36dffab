"""Reference solutions for labs/exercises/parameter_server.py (lab 07)."""

from __future__ import annotations

import heapq


def server_link_time(n_workers, n_params, num_servers, grad_bytes, weight_bytes, bandwidth_Bps, latency_s):
    if n_workers < 1 or num_servers < 1 or bandwidth_Bps <= 0:
        raise ValueError("n_workers and num_servers must be >= 1 and bandwidth positive")
    fan_in = max(n_workers / num_servers, 1.0)          # the busier link: a server's, or a worker's own
    push = latency_s + fan_in * n_params * grad_bytes / bandwidth_Bps
    pull = latency_s + fan_in * n_params * weight_bytes / bandwidth_Bps
    return push + pull


def shard_keys(sizes, num_servers):
    if num_servers < 1:
        raise ValueError("num_servers must be >= 1")
    if any(s < 0 for s in sizes):
        raise ValueError("sizes must not be negative")
    owner = [0] * len(sizes)
    heap = [(0, j) for j in range(num_servers)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, j = heapq.heappop(heap)
        owner[i] = j
        heapq.heappush(heap, (load + sizes[i], j))
    return owner


def aggregate(grads, mode, state=None, decay=0.5):
    if not grads:
        raise ValueError("no gradients to aggregate")
    total = grads[0] * 1
    for g in grads[1:]:
        total = total + g
    if mode == "sum":
        return total, None
    mean = total / len(grads)
    if mode == "mean":
        return mean, None
    if mode == "ema":
        u = mean if state is None else decay * state + (1 - decay) * mean
        return u, u
    raise ValueError(f"unknown aggregation {mode!r}")


def hogwild_apply(w0, deltas, schedule):
    w, register = w0, {}
    for event, i in schedule:
        if event == "read":
            register[i] = w
        elif event == "write":
            if i not in register:
                raise ValueError(f"worker {i} writes before it reads")
            w = register.pop(i) + deltas[i]
        else:
            raise ValueError(f"unknown event {event!r}")
    return w


def ps_sgd_round(weights, grad, lr, server=0, group=None):
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    me = dist.get_rank(group)
    to_global = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    workers = [r for r in range(n) if r != server]

    def batch(ops):
        for req in dist.batch_isend_irecv([dist.P2POp(op, t, to_global(peer), group=group) for op, t, peer in ops]):
            req.wait()

    if me == server:
        bufs = [torch.empty_like(weights) for _ in workers]
        batch([(dist.irecv, b, r) for b, r in zip(bufs, workers)])         # push: one gradient from each worker
        new = weights - lr * sum(bufs) / len(workers)
        batch([(dist.isend, new, r) for r in workers])                     # pull: the new weights to each
        return new
    batch([(dist.isend, grad.contiguous(), server)])
    new = torch.empty_like(weights)
    batch([(dist.irecv, new, server)])
    return new
