"""Workers for tests/exercises/test_expert_parallel.py (spawned on 2 gloo processes; importable by name).

Every process builds the same E experts (small MLPs, float64) and every rank's tokens, routing and upstream
gradient from fixed seeds; rank r hands the student's `expert_parallel_moe` its own tokens and the experts
[r E/ep, (r+1) E/ep) in strict mode, recording the wire of the forward and of the backward. The oracle is
the dense layer in this process: every token of every rank through its k experts, weighted, and the
gradients of the summed loss of all ranks.
"""

from __future__ import annotations

CASES = [  # (tokens per rank, dim, n_experts, k, skew): skew routes rank 0's tokens to its own experts only
    (6, 4, 4, 2, False),
    (5, 3, 4, 1, False),
    (8, 4, 8, 3, False),
    (7, 4, 4, 2, True),
]


def _experts(n_experts: int, dim: int, seed: int) -> list:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim)).double()
            for _ in range(n_experts)]


def _routing(t: int, dim: int, n_experts: int, k: int, skew: bool, rank: int, world: int, case: int) -> tuple:
    """(tokens, index, weights, dout) of rank `rank` (the same in every process)."""
    import torch

    g = torch.Generator().manual_seed(100 * case + rank)
    x = torch.randn(t, dim, generator=g, dtype=torch.float64)
    logits = torch.randn(t, n_experts, generator=g, dtype=torch.float64)
    if skew and rank == 0:
        logits[:, n_experts // world:] -= 100.0            # rank 0 keeps every row: a zero split
    top, index = logits.topk(k, dim=-1)
    weights = torch.softmax(top, dim=-1)
    dout = torch.randn(t, dim, generator=g, dtype=torch.float64)
    return x, index, weights, dout


def moe_worker(rank: int, world_size: int, module_name: str) -> list:
    """Per case: output and gradient errors against the dense layer, and the wire of the forward and of the
    backward (wire summaries) with the bytes expected of each exchange."""
    import importlib

    import torch
    from guard import guarded
    from recorders import strict_worker, wire_summary

    from llama_course.core import wire

    wire.install()
    strict_worker(wire)
    exercise = guarded(importlib.import_module(module_name), "expert_parallel")
    out = []
    for case, (t, d, n_exp, k, skew) in enumerate(CASES):
        n_local = n_exp // world_size
        mine = range(rank * n_local, (rank + 1) * n_local)
        ref_experts, experts = _experts(n_exp, d, case), _experts(n_exp, d, case)
        everyone = [_routing(t, d, n_exp, k, skew, r, world_size, case) for r in range(world_size)]
        # the oracle: the dense layer over every rank's tokens in one process
        ref_x = ref_w = None
        for r, (x, index, weights, dout) in enumerate(everyone):
            xr, wr = x.clone().requires_grad_(), weights.clone().requires_grad_()
            y = torch.zeros_like(xr)
            for j in range(k):
                y = y + wr[:, j:j + 1] * torch.stack([ref_experts[int(e)](xr[i]) for i, e in enumerate(index[:, j])])
            (y * dout).sum().backward()
            if r == rank:
                ref_y, ref_x, ref_w = y.detach(), xr.grad, wr.grad
        received = sum(int(((e[1] >= mine.start) & (e[1] < mine.stop)).sum()) for e in everyone)
        x, index, weights, dout = everyone[rank]
        x, weights = x.clone().requires_grad_(), weights.clone().requires_grad_()
        row = {"error": ""}
        try:
            with wire.recording() as fwd:
                y = exercise.expert_parallel_moe(x, index.clone(), weights, [experts[e] for e in mine], n_exp)
            with wire.recording() as bwd:
                (y * dout).sum().backward()
            expert_diff = max(_diff(p.grad, q.grad) for e in mine
                              for p, q in zip(experts[e].parameters(), ref_experts[e].parameters()))
            row.update(out_diff=float((y.detach() - ref_y).abs().max()), shape_ok=tuple(y.shape) == (t, d),
                       dx_diff=_diff(x.grad, ref_x), dw_diff=_diff(weights.grad, ref_w), expert_diff=expert_diff,
                       counts_bytes=n_exp * 8, sent_bytes=t * k * d * 8, received_bytes=received * d * 8,
                       forward=wire_summary(fwd), backward=wire_summary(bwd))
        except Exception as e:  # noqa: BLE001 - the test reports it
            row["error"] = f"{type(e).__name__}: {e}"
        out.append(row)
        if row["error"]:
            break
    return out


def _diff(got, want) -> float:
    import torch

    if got is None and want is None:
        return 0.0
    if got is None:
        got = torch.zeros_like(want)
    if want is None:
        want = torch.zeros_like(got)
    return float((got - want).abs().max())
