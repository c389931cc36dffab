"""Reference solutions for lab 11, communication_compression (labs/exercises/communication_compression.py)."""

from __future__ import annotations


def wire_bytes(method, numel, n_ranks, ratio=0.01, shape=None, rank=4):
    """Exercise 11.1."""
    ring = 2 * (n_ranks - 1) / n_ranks                    # one rank: 0, and so is every formula below
    if method == "none":
        return ring * 4 * numel
    if method in ("fp16", "bf16"):
        return ring * 2 * numel
    if method == "topk":
        return (n_ranks - 1) * 8 * max(1, int(ratio * numel))
    if method == "powersgd":
        if shape is None or len(shape) != 2:
            raise ValueError("powersgd needs the gradient's 2-D shape")
        a, b = shape
        r = min(rank, a, b)
        return ring * 4 * r * (a + b)
    raise ValueError(f"unknown method {method!r}")


def topk_error_feedback(grad, residual, k):
    """Exercise 11.2."""
    import torch

    e = grad + residual
    indices = torch.topk(e.abs(), k, sorted=False).indices
    values = e[indices].clone()
    new_residual = e.clone()
    new_residual[indices] = 0
    return indices, values, new_residual


def powersgd_step(matrix, q):
    """Exercise 11.3."""
    import torch

    p = torch.linalg.qr(matrix @ q).Q
    q_new = matrix.t() @ p
    return p, q_new, p @ q_new.t()


def topk_all_reduce(grad, residual, k, group=None):
    """Exercise 11.4."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    indices, values, new_residual = topk_error_feedback(grad, residual, k)
    residual.copy_(new_residual)
    all_idx = [torch.empty_like(indices) for _ in range(n)]
    all_val = [torch.empty_like(values) for _ in range(n)]
    dist.all_gather(all_idx, indices.contiguous(), group=group)
    dist.all_gather(all_val, values.contiguous(), group=group)
    dense = torch.zeros_like(grad)
    dense.index_add_(0, torch.cat(all_idx), torch.cat(all_val))
    return dense / n
