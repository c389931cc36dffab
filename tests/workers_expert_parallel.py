"""Workers for tests/test_expert_parallel.py (spawned by llama_course.core.testing.spawn; importable by name).

`layouts` trains each mixture-of-experts case on the model-parallel tests' tiny model and random batches
(workers_model_parallel: SGD, fp32) and returns the run and its single-process oracle, plus every rank's
step-1 all-to-all calls. `all_to_all_against_torch` runs the course's autograd all-to-all and torch's
(torch.distributed.nn.functional.all_to_all_single) on the same uneven splits, forward and backward."""

from __future__ import annotations

import torch
import workers_model_parallel as mp

MOE = {"model.n_experts": 4, "model.experts_per_token": 2}


def run_layout(overrides: dict, steps: int = 2) -> dict | None:
    """Train one layout: rank 0 returns losses, grad norm and full gradients of step 1, the weights after the
    last step, a held-out loss, the oracle's, and every rank's step-1 all-to-all calls."""
    import torch.distributed as dist

    from llama_course.core import wire
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    cfg = mp.make_config({**MOE, **overrides})
    p = cfg.parallel
    ctx = init_distributed(cfg.replicas, p.tp, p.pp, cp=p.cp, ep=p.ep)
    engine = build_engine(cfg, ctx, build_model(cfg))
    per_shard = len(mp.global_batches(cfg, 1)[0]) // ctx.data_shards
    losses, grads, norm, calls, aux = [], None, None, [], None
    for step, batch in enumerate(mp.global_batches(cfg, steps)):
        mine = batch[ctx.data_rank * per_shard:(ctx.data_rank + 1) * per_shard]
        with wire.recording() as log:
            out = engine.train_step(mine, cfg.training.lr)
        losses.append(out["loss"])
        if step == 0:
            norm, aux = out["grad_norm"], out.get("router_aux_loss")
            calls = [(c.kind, c.dtype, c.nbytes, c.group_size) for c in log.calls if c.kind == "all_to_all"]
            grads = engine.full_gradients()
    val = engine.evaluate(mp.global_batches(cfg, 1)[0][:2])
    weights = engine.full_model_state()
    everyone = [None] * ctx.world_size
    dist.all_gather_object(everyone, ((*losses, val), calls))
    if ctx.rank != 0:
        return None
    return {"engine": engine.name, "losses": losses, "rank_losses": [e[0] for e in everyone], "grad_norm": norm,
            "grads": grads, "val_loss": val, "weights": weights, "reference": mp.reference(cfg, steps),
            "calls": [e[1] for e in everyone], "n_micro": len(mine), "router_aux_loss": aux}


def layouts(rank: int, world: int, cases: list) -> dict:
    """Every case in turn on the same processes, then the all-to-all against torch's."""
    from llama_course.core import wire

    wire.set_strict(True)
    return {"layouts": [run_layout(case) for case in cases], "oracle": all_to_all_against_torch(rank, world)}


def all_to_all_against_torch(rank: int, world: int) -> dict:
    """Rows of width 3 with uneven splits (zeros included) through the course's AllToAll and torch's
    autograd all_to_all_single: outputs and input gradients of this rank, both ways."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnn

    from llama_course.parallel.expert_parallel_comm import all_to_all

    sends = [[(s * 3 + d) % 4 for d in range(world)] for s in range(world)]    # sends[s][d]: rows s -> d
    sends[0][world - 1] = 0
    in_splits = sends[rank]
    out_splits = [sends[s][rank] for s in range(world)]
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(sum(in_splits), 3, generator=g)
    dy = torch.randn(sum(out_splits), 3, generator=g)
    group = dist.group.WORLD
    ours_x = x.clone().requires_grad_()
    ours = all_to_all(ours_x, out_splits, in_splits, group)
    ours.backward(dy)
    theirs_x = x.clone().requires_grad_()
    theirs = dnn.all_to_all_single(torch.empty(sum(out_splits), 3), theirs_x, out_splits, in_splits, group)
    theirs.backward(dy)
    return {"ours": (ours.detach(), ours_x.grad), "torch": (theirs.detach(), theirs_x.grad)}
