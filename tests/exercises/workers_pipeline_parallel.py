"""Worker for the graded pipeline exercise 5.5 (spawned by llama_course.core.testing.spawn; importable by name).

Each rank builds the same little model (one Linear + tanh per stage), keeps its own stage, runs the
student's `pipeline_step` on the gloo group, and compares its stage's gradients with a single-process
forward and backward of the whole model on the same micro-batches (the oracle, computed on every rank).
It also records the order of forwards and backwards the stage actually ran.
"""

from __future__ import annotations

import copy

from recorders import strict_worker, wire_summary


def pipeline_worker(rank: int, world_size: int, impl: str, m: int) -> dict:
    import torch
    from adapter import load
    from guard import guarded
    from torch import nn

    from llama_course.core import wire

    wire.install()
    strict_worker(wire)                            # NCCL's rules: batched point-to-point, matched in order
    exercise = guarded(load("pipeline_parallel", impl), "pipeline_parallel")
    torch.manual_seed(0)
    width, batch = 8, 3
    model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(world_size)])
    inputs = [torch.randn(batch, width) for _ in range(m)]
    targets = [torch.randn(batch, width) for _ in range(m)]
    loss_fn = lopsided_loss

    reference = copy.deepcopy(model)
    expected_loss = 0.0
    for x, y in zip(inputs, targets):
        loss = loss_fn(reference(x), y) / m
        loss.backward()
        expected_loss += float(loss) * m

    stage = copy.deepcopy(model[rank])
    events: list = []
    stage.register_forward_pre_hook(lambda mod, args: events.append("F"))
    stage.register_full_backward_hook(lambda mod, gin, gout: events.append("B"))
    out = {"expected_loss": expected_loss, "message_bytes": batch * width * 4, "error": ""}
    try:
        with wire.recording() as log:
            got = exercise.pipeline_step(stage, inputs, targets, rank, world_size, loss_fn, (batch, width))
    except Exception as e:  # noqa: BLE001 - reported to the test (StrictModeError: a deadlock on NCCL)
        return {**out, "error": f"{type(e).__name__}: {e}"}
    diffs = [float((p.grad - q.grad).abs().max()) if p.grad is not None else float("inf")
             for p, q in zip(stage.parameters(), reference[rank].parameters())]
    return {**out, "grad_diff": max(diffs), "loss": float(got or 0.0), "events": "".join(events),
            "wire": wire_summary(log)}


def lopsided_loss(out, target):
    """A loss that is not symmetric in its two arguments (mean squared error plus a tilt on the output)."""
    return ((out - target) ** 2 + 0.3 * out).mean()
