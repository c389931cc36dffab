"""Spawned workers for tests/test_mixed_precision.py: fp16 with an injected overflow, bf16's reduction dtype.

Every case trains the model of workers_model_parallel (tiny, 4 layers, SGD) on the same random global
batches. At step INJECT one rank sets one element of one of its gradients to inf (a tensor hook on its first
parameter), as an fp16 overflow would; the single-process oracle does the same to its first parameter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from workers_model_parallel import global_batches, make_config

STEPS, INJECT = 4, 2
SCALE = 1024.0          # a start scale the tiny model never overflows at by itself (2^16 would, on step 1)


def _train(engine, cfg, ctx, inject_rank: int | None) -> dict:
    engine.precision.scaler.scale = SCALE
    per_dp = len(global_batches(cfg, 1)[0]) // cfg.parallel.dp
    out = {"skipped": [], "scale": [], "losses": []}
    for step, batch in enumerate(global_batches(cfg, STEPS)):
        mine = batch[ctx.dp_rank * per_dp:(ctx.dp_rank + 1) * per_dp]
        handle = None
        if step == INJECT and ctx.rank == inject_rank:
            first = next(engine.base_model.parameters())
            handle = first.register_hook(_one_inf)
        before = engine.full_model_state() if step == INJECT else None
        rec = engine.train_step(mine, cfg.training.lr)
        if handle is not None:
            handle.remove()
        if step == INJECT:
            after = engine.full_model_state()
            out["unchanged"] = None if after is None else all(torch.equal(before[k], after[k]) for k in after)
        out["skipped"].append(rec["skipped"])
        out["scale"].append(rec["loss_scale"])
        out["losses"].append(rec["loss"])
    out["weights"] = engine.full_model_state()
    return out


def _one_inf(g: torch.Tensor) -> torch.Tensor:
    """The gradient with its first element inf: under ZeRO-2 only the rank owning that element sees it."""
    g = g.clone()
    g.view(-1)[0] = float("inf")
    return g


def reference(overrides: dict) -> dict:
    """The single process with the same injection (its first parameter at step INJECT)."""
    from llama_course.core.distributed import Context
    from llama_course.core.model import build_model
    from llama_course.engine import Engine

    cfg = make_config({**overrides, "cluster.num_gpus": 1, "parallel.tp": 1, "parallel.pp": 1,
                       "parallel.zero_stage": 0, "parallel.implementation": "course"})
    return _train(Engine(cfg, Context(), build_model(cfg)), cfg, Context(), inject_rank=0)


def overflow_case(overrides: dict, inject_rank: int) -> dict | None:
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    cfg = make_config(overrides)
    p = cfg.parallel
    ctx = init_distributed(p.dp, p.tp, p.pp)
    out = _train(build_engine(cfg, ctx, build_model(cfg)), cfg, ctx, inject_rank)
    every = [None] * ctx.world_size
    dist.all_gather_object(every, (out["skipped"], out["scale"]))
    out["every_rank"] = every
    return out if ctx.rank == 0 else None


def bf16_case(overrides: dict) -> dict | None:
    """bf16 autocast, course bucketed data parallel: bytes on the wire per step, dtypes, losses."""
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    cfg = make_config(overrides)
    ctx = init_distributed(cfg.parallel.dp, 1, 1)
    engine = build_engine(cfg, ctx, build_model(cfg))
    seen = []
    engine.base_model.output.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    per_dp = len(global_batches(cfg, 1)[0]) // cfg.parallel.dp
    losses, sent = [], []
    for batch in global_batches(cfg, 2):
        rec = engine.train_step(batch[ctx.dp_rank * per_dp:(ctx.dp_rank + 1) * per_dp], cfg.training.lr)
        losses.append(rec["loss"])
        sent.append(rec["bytes_sent"])
    params = {q.dtype for q in engine.base_model.parameters()} | {q.grad.dtype for q in engine.base_model.parameters()}
    return {"losses": losses, "bytes_sent": sent, "param_dtypes": sorted(map(str, params)),
            "logits_dtypes": sorted({str(d) for d in seen})} if ctx.rank == 0 else None


def run_all(rank: int, world: int, overflow: list, bf16: list) -> dict:
    return {"overflow": [overflow_case(o, r) for o, r in overflow], "bf16": [bf16_case(o) for o in bf16]}


def reference_bf16(overrides: dict) -> list:
    """The single process's bf16 losses of bf16_case's two steps."""
    from llama_course.core.distributed import Context
    from llama_course.core.model import build_model
    from llama_course.engine import Engine

    cfg = make_config({**overrides, "cluster.num_gpus": 1})
    engine = Engine(cfg, Context(), build_model(cfg))
    return [engine.train_step(batch, cfg.training.lr)["loss"] for batch in global_batches(cfg, 2)]
