"""Spawned workers for tests/test_data_parallel.py: every data-parallel implementation on one set of ranks.

Each run trains the tiny model for a few steps on the built-in corpus with the same global batch and
returns rank 0's per-step losses and final weights, so the parent can hold them against dp = 1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
from llama_course.core.distributed import Context, init_distributed
from llama_course.core.model import build_model
from llama_course.engine import Engine, build_engine
from llama_course.parallel.data_parallel import DataParallelSync
from simulator.config import load_config

STEPS = 3

# name -> config overrides (parallel.*), on top of base_config
IMPLEMENTATIONS = {
    "naive": {"bucket_mb": 0},
    "bucketed": {"bucket_mb": 0.25, "overlap": True},
    "bucketed_no_overlap": {"bucket_mb": 0.25, "overlap": False},
    "zero1": {"zero_stage": 1, "bucket_mb": 0.25},
    "zero2": {"zero_stage": 2, "bucket_mb": 0.25},
    "zero3": {"zero_stage": 3},
    "ddp": {"implementation": "torch", "bucket_mb": 0.25},
    "fsdp2": {"implementation": "torch", "zero_stage": 3},
    "fsdp2_zero2": {"implementation": "torch", "zero_stage": 2},
}
EDGE = ("naive", "bucketed", "zero1", "zero2", "zero3")     # tied + frozen + unused-in-a-step


def base_config(dp: int, parallel: dict | None = None, training: dict | None = None, model: dict | None = None):
    raw = {"model": {"preset": "tiny", **(model or {})}, "seq_len": 32,
           "cluster": {"gpu": "cpu", "num_gpus": dp},
           "parallel": {"micro_batch_size": 2, "global_batch_size": 8, **(parallel or {})},
           "training": {"precision": "fp32", "optimizer": "adamw", "lr": 1e-3, "warmup_steps": 0,
                        "steps": STEPS, "grad_clip": 1.0, **(training or {})}}
    return load_config(raw)


def edge_model(cfg, flags: dict) -> nn.Module:
    """Tied embeddings (from cfg), two frozen parameters, and `extra`, used only when flags['extra']."""
    model = build_model(cfg)
    model.layers[0].attention.wq.weight.requires_grad_(False)
    model.norm.weight.requires_grad_(False)
    model.extra = nn.Linear(cfg.model.dim, cfg.model.dim, bias=False)
    model.norm.register_forward_hook(lambda m, a, out: out + 0.1 * model.extra(out) if flags["extra"] else None)
    return model


def train(cfg, ctx: Context, edge: bool = False, engine_cls=None) -> dict:
    """STEPS optimizer steps; returns losses, final full weights (rank 0), memory and bytes of rank ctx.rank."""
    data = load_tokens(cfg)
    seqs = pack(data.train, cfg.seq_len)
    sampler = BatchSampler(len(seqs), cfg.parallel.global_batch_size, cfg.training.seed)
    flags = {"extra": False}
    model = edge_model(cfg, flags) if edge else build_model(cfg)
    engine = (engine_cls or build_engine)(cfg, ctx, model, None)
    losses, sent = [], []
    for step in range(STEPS):
        flags["extra"] = step == 1
        batches = [get_batch(seqs, i) for i in sampler.shard(step, ctx.dp_rank, ctx.dp, cfg.parallel.micro_batch_size)]
        out = engine.train_step(batches, cfg.training.lr)
        losses.append(out["loss"])
        sent.append(out.get("bytes_sent"))
    result = {"losses": losses, "bytes_sent": sent, "engine": engine.name,
              "memory": engine.sync.memory_bytes() if isinstance(engine.sync, DataParallelSync) else None}
    full = engine.full_model_state()
    if full is not None:
        result["state"] = {k: v.detach().clone() for k, v in full.items()}
    result["engine_obj"] = engine
    return result


def reference(edge: bool = False, **kw) -> dict:
    """The dp = 1 run, in this process (no process group needed)."""
    cfg = base_config(1, **kw)
    return train(cfg, Context(), edge, engine_cls=Engine)


def run_all(rank: int, world: int) -> dict:
    """Every implementation, in sequence, on these `world` ranks; rank 0's results (others: memory only)."""
    ctx = init_distributed(world, 1, 1)
    out = {}
    names = list(IMPLEMENTATIONS) if world == 2 else ["naive", "bucketed", "zero1", "zero2", "zero3", "ddp", "fsdp2"]
    import time

    for name in names:
        t0 = time.perf_counter()
        cfg = base_config(world, IMPLEMENTATIONS[name])
        r = train(cfg, ctx)
        if name in ("zero1", "zero2", "zero3", "fsdp2"):     # sharded state round trip into a fresh engine
            engine = r.pop("engine_obj")
            state = copy.deepcopy(engine.state_dict())           # as through torch.save / torch.load
            fresh = build_engine(cfg, ctx, build_model(cfg, seed=123), None)
            fresh.load_state_dict(state)
            again = fresh.full_model_state()
            same = None if again is None else all(torch.equal(again[k], r["state"][k]) for k in again)
            # one more step from the original and from the reloaded engine: optimizer state came along too
            data = load_tokens(cfg)
            seqs = pack(data.train, cfg.seq_len)
            idx = BatchSampler(len(seqs), cfg.parallel.global_batch_size, 1).shard(0, ctx.dp_rank, ctx.dp, 2)
            batches = [get_batch(seqs, i) for i in idx]
            engine.train_step(batches, cfg.training.lr)
            fresh.train_step(batches, cfg.training.lr)
            a, b = engine.full_model_state(), fresh.full_model_state()
            r["reloaded_equal"] = None if a is None else same and all(torch.equal(a[k], b[k]) for k in a)
        r.pop("engine_obj", None)
        r["seconds"] = time.perf_counter() - t0
        out[name] = r
    if world == 2:
        for name in EDGE:
            cfg = base_config(world, IMPLEMENTATIONS[name], model={"tie_embeddings": True})
            r = train(cfg, ctx, edge=True)
            r.pop("engine_obj")
            out[f"edge_{name}"] = r
        for opt in ("lamb", "lars"):      # layer-wise trust ratios over ZeRO pieces
            cfg = base_config(world, IMPLEMENTATIONS["zero2"], training={"optimizer": opt})
            r = train(cfg, ctx)
            r.pop("engine_obj")
            out[f"zero2_{opt}"] = r
    if rank:
        return {k: {"memory": v["memory"]} for k, v in out.items()}
    return out
