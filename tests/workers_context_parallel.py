"""Workers for tests/test_context_parallel.py (spawned by llama_course.core.testing.spawn; importable by name).

`layouts` trains each context-parallel case on the model-parallel tests' tiny model and random batches
(workers_model_parallel: SGD, fp32) and returns what `run_layout` there returns, plus what the first
step handed to torch.distributed. `attention_against_torch` runs one attention both ways: the course's
all-gather context parallelism and torch's ring attention (`_templated_ring_attention`)."""

from __future__ import annotations

import torch
import workers_model_parallel as mp


def run_layout(overrides: dict, steps: int = 2) -> dict | None:
    """Train one layout: rank 0 returns losses, step-1 grad norm and full gradients, the weights after the
    last step, a held-out loss, the single-process oracle's, and step 1's all-gather / reduce-scatter calls."""
    import torch.distributed as dist

    from llama_course.core import wire
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    cfg = mp.make_config(overrides)
    p = cfg.parallel
    ctx = init_distributed(cfg.replicas, p.tp, p.pp, cp=p.cp)
    engine = build_engine(cfg, ctx, build_model(cfg))
    per_shard = len(mp.global_batches(cfg, 1)[0]) // ctx.data_shards
    losses, grads, norm, calls = [], None, None, []
    for step, batch in enumerate(mp.global_batches(cfg, steps)):
        mine = batch[ctx.data_rank * per_shard:(ctx.data_rank + 1) * per_shard]   # whole sequences
        with wire.recording() as log:
            out = engine.train_step(mine, cfg.training.lr)
        losses.append(out["loss"])
        if step == 0:
            norm = out["grad_norm"]
            calls = [(c.kind, c.nbytes, c.group_size) for c in log.calls if c.kind in ("all_gather", "reduce_scatter")]
            grads = engine.full_gradients()
    val = engine.evaluate(mp.global_batches(cfg, 1)[0][:2])
    weights = engine.full_model_state()
    all_losses = [None] * ctx.world_size
    dist.all_gather_object(all_losses, (*losses, val))
    if ctx.rank != 0:
        return None
    return {"engine": engine.name, "losses": losses, "rank_losses": all_losses, "grad_norm": norm, "grads": grads,
            "val_loss": val, "weights": weights, "reference": mp.reference(cfg, steps), "calls": calls,
            "n_micro": len(mine)}


def layouts(rank: int, world: int, cases: list) -> list:
    """Every case in turn on the same processes."""
    return [run_layout(case) for case in cases]


def attention_against_torch(rank: int, world: int, seq_len: int) -> dict:
    """One causal attention (b 2, heads 2, head_dim 8) on `world` cp ranks, each holding its two chunks:
    the course's (all-gather of K, V; reduce-scatter of dK, dV) and torch's ring attention with its own
    head-tail load balancing, forward and backward. Returns rank `rank`'s outputs and input gradients."""
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._context_parallel._attention import (
        _templated_ring_attention,
        _templated_ring_attention_backward,
    )

    from llama_course.core import wire
    from llama_course.parallel.context_parallel import context_parallel_attention
    from llama_course.parallel.context_parallel_comm import local_positions, shard_sequence

    g = torch.Generator().manual_seed(7)
    q, k, v, dout = (torch.randn(2, 2, seq_len, 8, generator=g) for _ in range(4))
    group = dist.group.WORLD
    mine = [shard_sequence(t, world, rank, dim=2) for t in (q, k, v, dout)]

    ql, kl, vl = (t.clone().requires_grad_() for t in mine[:3])
    with wire.recording() as log:
        ours = context_parallel_attention(ql, kl, vl, local_positions(seq_len, world, rank), group)
        ours.backward(mine[3])
    calls = [(c.kind, c.nbytes, c.group_size) for c in log.calls]

    aten = torch.ops.aten
    out, lse = _templated_ring_attention(group, 2, aten._scaled_dot_product_flash_attention_for_cpu,
                                         mine[0], mine[1], mine[2], is_causal=True)[:2]
    dq, dk, dv = _templated_ring_attention_backward(
        group, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward.default, grad_out=mine[3],
        grad_out_name="grad_out", query=mine[0], key=mine[1], value=mine[2], out=out, logsumexp=lse,
        is_causal=True, dropout_p=0.0)[:3]
    return {"ours": (ours.detach(), ql.grad, kl.grad, vl.grad), "torch": (out, dq, dk, dv), "calls": calls,
            "full": (q, k, v, dout)}
