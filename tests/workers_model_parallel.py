"""Workers for the model-parallel tests (spawned by llama_course.core.testing.spawn; importable by name).

Every case trains the same tiny model on the same random global batches for a few steps, once in this
process as a single replica (the oracle) and once on the layout under test, and returns both runs' losses,
the full gradients of the first step and the full weights after the last (shards mapped back to
full-model names), and a held-out loss from `evaluate`.
SGD, not AdamW: Adam's g / sqrt(v) turns last-bit differences of gradients that are zero in exact
arithmetic (a key bias, a tied-away direction) into whole lr-sized steps, so weights would be compared
against noise; SGD keeps the update linear in the gradient.
"""

from __future__ import annotations

import torch

BASE = {
    "model": {"preset": "tiny", "n_layers": 4, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128,
              "vocab_size": 256},
    "seq_len": 16,
    "parallel": {"micro_batch_size": 1, "global_batch_size": 4},
    "training": {"precision": "fp32", "optimizer": "sgd", "lr": 0.1, "warmup_steps": 0, "steps": 2,
                 "seed": 0, "grad_clip": 1.0},
}


def make_config(overrides: dict):
    from simulator.config import load_config

    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.rpartition(".")
        node = raw
        for part in section.split(".") if section else []:
            node = node.setdefault(part, {})
        node[key] = value
    return load_config(raw)


def global_batches(cfg, steps: int) -> list:
    """steps x [global micro-batches (x, y)], micro_batch_size sequences each, from a fixed generator."""
    g = torch.Generator().manual_seed(1234)
    mbs, n = cfg.parallel.micro_batch_size, cfg.parallel.global_batch_size // cfg.parallel.micro_batch_size
    out = []
    for _ in range(steps):
        seqs = torch.randint(0, cfg.model.vocab_size, (n, mbs, cfg.seq_len + 1), generator=g)
        out.append([(s[:, :-1], s[:, 1:]) for s in seqs])
    return out


_REFERENCES: dict = {}


def reference(cfg, steps: int) -> dict:
    """The single-process run: losses per step, grad norm and gradients of step 1 (cached per model/batch)."""
    import dataclasses

    from llama_course.core.distributed import Context
    from llama_course.core.model import build_model
    from llama_course.engine import Engine

    single = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, dp=1, tp=1, pp=1, vpp=1,
                                                                  sequence_parallel=False,
                                                                  activation_checkpointing="none"),
                                 load_balance=dataclasses.replace(cfg.load_balance, policy="none"))
    key = (repr(single), steps)
    if key in _REFERENCES:
        return _REFERENCES[key]
    engine = Engine(single, Context(), build_model(cfg))      # no groups: no collective, inside a bigger world
    losses, grads, norm = [], None, None
    for step, batch in enumerate(global_batches(cfg, steps)):
        out = engine.train_step(batch, cfg.training.lr)
        losses.append(out["loss"])
        if step == 0:
            norm = out["grad_norm"]
            grads = {n: p.grad.detach().clone() for n, p in engine.base_model.named_parameters()}
    val = engine.evaluate(global_batches(cfg, 1)[0][:2])
    weights = {n: t.detach().clone() for n, t in engine.base_model.state_dict().items()}
    _REFERENCES[key] = {"losses": losses, "grads": grads, "grad_norm": norm, "val_loss": val, "weights": weights}
    return _REFERENCES[key]


def run_layout(overrides: dict, steps: int = 2) -> dict | None:
    """Train the layout; rank 0 returns its losses, step-1 grad norm and full gradients (+ the oracle's)."""
    import torch.distributed as dist

    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    cfg = make_config(overrides)
    p = cfg.parallel
    ctx = init_distributed(p.dp, p.tp, p.pp)
    engine = build_engine(cfg, ctx, build_model(cfg))
    per_dp = len(global_batches(cfg, 1)[0]) // p.dp
    losses, grads, norm = [], None, None
    for step, batch in enumerate(global_batches(cfg, steps)):
        mine = batch[ctx.dp_rank * per_dp:(ctx.dp_rank + 1) * per_dp]
        out = engine.train_step(mine, cfg.training.lr)
        losses.append(out["loss"])
        if step == 0:
            norm = out["grad_norm"]
            grads = engine.full_gradients()
    val = engine.evaluate(global_batches(cfg, 1)[0][:2])
    weights = engine.full_model_state()
    all_losses = [None] * ctx.world_size
    dist.all_gather_object(all_losses, (*losses, val))
    if ctx.rank != 0:
        return None
    torch_schedule = getattr(engine.schedule, "_schedule", None)      # implementation torch's pipeline schedule
    return {"engine": engine.name, "losses": losses, "rank_losses": all_losses, "grad_norm": norm,
            "grads": grads, "val_loss": val, "weights": weights, "reference": reference(cfg, steps),
            "torch_schedule": type(torch_schedule).__name__ if torch_schedule is not None else None}


def layouts(rank: int, world: int, cases: list) -> list:
    """Run every case in turn on the same processes (one spawn for many checks)."""
    return [run_layout(case) for case in cases]


def strict_layouts(rank: int, world: int, cases: list) -> list:
    """`layouts` with strict mode switched on in this process (NCCL's rules on gloo, core/wire.py)."""
    from llama_course.core import wire

    wire.set_strict(True)
    return layouts(rank, world, cases)


def pipeline_trace(overrides: dict, compute_delay: tuple = (0.0, 0.0)) -> list:
    """One traced step of a pipeline layout; every rank's events gathered on rank 0."""
    import torch.distributed as dist

    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.core.profiling import Tracer
    from llama_course.engine import build_engine

    cfg = make_config(overrides)
    p = cfg.parallel
    ctx = init_distributed(p.dp, p.tp, p.pp)
    engine = build_engine(cfg, ctx, build_model(cfg), Tracer(enabled=True, rank=ctx.rank))
    engine.schedule.compute_delay = compute_delay
    batch = global_batches(cfg, 1)[0]
    engine.train_step(batch, cfg.training.lr)
    events = [None] * ctx.world_size
    dist.all_gather_object(events, engine.tracer.events)
    return events


def pipelines(rank: int, world: int, cases: list, traced: list) -> dict:
    """Layouts, then one traced step of each layout in `traced` (the pipeline test's single spawn)."""
    return {"layouts": layouts(rank, world, cases),
            "traces": [pipeline_trace(overrides, (0.004, 0.008)) for overrides in traced]}
