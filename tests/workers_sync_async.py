"""Spawned workers for tests/test_sync_async.py (importable by name, as llama_course.core.testing.spawn needs)."""

from __future__ import annotations

import torch

TINY = {"model": {"preset": "tiny"}, "seq_len": 16,
        "training": {"precision": "fp32", "steps": 4, "warmup_steps": 1, "eval_batches": 1},
        "parallel": {"global_batch_size": 4, "micro_batch_size": 2, "implementation": "course"}}


def _flat(params) -> torch.Tensor:
    return torch.cat([q.detach().flatten() for q in params]).clone()


def local_sgd_rounds(rank, world, local_steps, outer_lr, outer_momentum, steps):
    """The LocalSGDEngine on `world` gloo ranks, each training on its own random tokens. Returns the starting
    weights, the weights after every step, and {step: weights just before the outer step} (the engine's own
    outer_step runs; this only watches what it is handed)."""
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine
    from simulator.config import load_config

    cfg = load_config(TINY, [f"cluster.num_gpus={world}", "parallel.sync=local_sgd",
                             f"parallel.local_steps={local_steps}", f"parallel.outer_lr={outer_lr}",
                             f"parallel.outer_momentum={outer_momentum}"])
    ctx = init_distributed(world, 1, 1)
    torch.manual_seed(0)                            # the same initial model on every rank
    engine = build_engine(cfg, ctx, build_model(cfg))
    assert engine.name == "local_sgd", engine.name
    start = _flat(engine.params)
    seen = {}
    outer_step = engine.outer_step

    def watched():
        seen[engine.steps] = _flat(engine.params)
        outer_step()

    engine.outer_step = watched
    data = torch.Generator().manual_seed(1 + rank)  # each replica its own data: the replicas drift apart
    after = []
    for _ in range(steps):
        x = torch.randint(0, cfg.model.vocab_size, (2, cfg.seq_len + 1), generator=data)
        engine.train_step([(x[:, :-1], x[:, 1:])], lr=1e-2)
        after.append(_flat(engine.params))
    return start, after, seen
