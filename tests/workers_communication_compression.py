"""Spawned workers for tests/test_communication_compression.py."""

from __future__ import annotations

import torch

from llama_course.parallel import collectives as C
from llama_course.parallel import communication_compression as CC


def _grads(rank, step, shapes):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.cat([torch.randn(torch.Size(s).numel(), generator=g) for s in shapes])


def _layout(shapes):
    out, o = [], 0
    for s in shapes:
        out.append((o, s))
        o += torch.Size(s).numel()
    return out


def _mean(t):
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t / torch.distributed.get_world_size()


def check_all(rank: int, world: int) -> dict:
    shapes = [(32, 16), (16,), (24, 8)]
    layout, n = _layout(shapes), sum(torch.Size(s).numel() for s in shapes)
    out = {}
    # casts: close to the exact mean, half the bytes
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        g, counter = _grads(rank, 0, shapes), C.WireCounter()
        exact = _mean(g)
        CC.CastCompressor(dtype, name).all_reduce(g, layout, 0, None, counter)
        out[name] = {"err": float((g - exact).abs().max() / exact.abs().max()), "bytes": counter.sent}
        g = _grads(rank, 0, shapes)                           # ZeRO-2/3 reduce-scatter in 16 bits
        mine = CC.CastCompressor(dtype, name).reduce_scatter(g, None, C.WireCounter())
        lo, hi = C.chunk_range(n, world, rank)
        out[name]["rs_err"] = float((mine - exact[lo:hi]).abs().max() / exact.abs().max())
    counter = C.WireCounter()
    g = _grads(rank, 0, shapes)
    CC.Compressor().all_reduce(g, layout, 0, None, counter)
    out["none"] = {"err": float((g - _mean(_grads(rank, 0, shapes))).abs().max()), "bytes": counter.sent}
    # top-k and PowerSGD: error feedback conserves the gradient: sent + mean residual = mean (grad + old residual)
    for comp in (CC.TopKCompressor(0.1), CC.PowerSGDCompressor(2)):
        worst, counter = 0.0, C.WireCounter()
        for step in range(3):
            g = _grads(rank, step, shapes)
            before = comp.residual.get(0, torch.zeros(n)).clone()
            target = _mean(g + before)
            comp.all_reduce(g, layout, 0, None, counter)
            worst = max(worst, float((g + _mean(comp.residual[0]) - target).abs().max()))
            lossy = float((g - target).abs().max())
        out[comp.name] = {"conservation": worst, "lossy": lossy, "bytes": counter.sent / 3}
    # PowerSGD recovers a gradient that really has rank 1 (the same on every rank) in one step
    u = torch.randn(32, 1, generator=torch.Generator().manual_seed(5))
    v = torch.randn(1, 16, generator=torch.Generator().manual_seed(6))
    g = (u @ v).reshape(-1).clone()
    CC.PowerSGDCompressor(1).all_reduce(g, [(0, (32, 16))], 7, None, C.WireCounter())
    out["powersgd_rank1_err"] = float((g.view(32, 16) - u @ v).abs().max())
    return out
