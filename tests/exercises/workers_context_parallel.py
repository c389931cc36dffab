"""Worker for the graded context-parallel exercise 15.4 (spawned by llama_course.core.testing.spawn).

Every rank draws the same whole-sequence q, k, v and upstream gradient, keeps its head-tail chunks (cut here,
not by the answer), and calls the student's `gathered_attention` on them in strict mode, recording the wire
of the forward and of the backward. The oracle is causal attention on the whole sequence in this process,
its output and gradients cut into the rank's chunks.
"""

from __future__ import annotations

CASES = [  # (b, n_heads, n_kv_heads, s, hd)
    (2, 4, 2, 8, 4),
    (1, 2, 2, 12, 8),
    (1, 6, 2, 16, 4),
]


def _chunks(s: int, cp: int, rank: int) -> list:
    n = s // (2 * cp)
    return [(rank * n, (rank + 1) * n), ((2 * cp - 1 - rank) * n, (2 * cp - rank) * n)]


def _mine(x, s, cp, rank, dim=2):
    import torch

    return torch.cat([x.narrow(dim, a, b - a) for a, b in _chunks(s, cp, rank)], dim)


def attention_worker(rank: int, world_size: int, module_name: str) -> list:
    """Per case: output and q/k/v gradient errors against the whole-sequence attention, and the wire of the
    forward and of the backward (wire summaries)."""
    import importlib

    import torch
    from guard import guarded
    from recorders import strict_worker, wire_summary

    from llama_course.core import wire

    torch.manual_seed(0)
    wire.install()
    strict_worker(wire)
    exercise = guarded(importlib.import_module(module_name), "context_parallel")
    out = []
    for case, (b, nh, nkv, s, hd) in enumerate(CASES):
        g = torch.Generator().manual_seed(50 + case)
        q_full, k_full, v_full = (torch.randn(b, h, s, hd, generator=g, dtype=torch.float64)
                                  for h in (nh, nkv, nkv))
        dout = torch.randn(b, nh, s, hd, generator=g, dtype=torch.float64)
        # the oracle: one process, the whole sequence
        ref = [t.clone().requires_grad_() for t in (q_full, k_full, v_full)]
        groups = nh // nkv
        kk, vv = (t.repeat_interleave(groups, dim=1) for t in ref[1:])
        scores = ref[0] @ kk.transpose(-2, -1) / hd ** 0.5
        keep = torch.ones(s, s, dtype=torch.bool).tril()
        o_ref = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ vv
        (o_ref * dout).sum().backward()
        # this rank
        q, k, v = (_mine(t, s, world_size, rank).clone().requires_grad_() for t in (q_full, k_full, v_full))
        positions = torch.cat([torch.arange(a, e) for a, e in _chunks(s, world_size, rank)])
        row = {"error": ""}
        try:
            with wire.recording() as fwd:
                o = exercise.gathered_attention(q, k, v, positions.clone())
            with wire.recording() as bwd:
                (o * _mine(dout, s, world_size, rank)).sum().backward()
            row.update(
                out_diff=float((o.detach() - _mine(o_ref.detach(), s, world_size, rank)).abs().max()),
                shape_ok=tuple(o.shape) == tuple(q.shape),
                dq_diff=_diff(q.grad, _mine(ref[0].grad, s, world_size, rank)),
                dk_diff=_diff(k.grad, _mine(ref[1].grad, s, world_size, rank)),
                dv_diff=_diff(v.grad, _mine(ref[2].grad, s, world_size, rank)),
                kv_bytes=(k.numel() + v.numel()) * k.element_size(),
                full_kv_bytes=(k_full.numel() + v_full.numel()) * k.element_size(),
                forward=wire_summary(fwd), backward=wire_summary(bwd))
        except Exception as e:  # noqa: BLE001 - the test reports it
            row["error"] = f"{type(e).__name__}: {e}"
        out.append(row)
        if row["error"]:
            break
    return out


def _diff(got, want) -> float:
    if got is None:
        return float("inf")
    return float((got - want).abs().max())
