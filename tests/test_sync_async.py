"""Sync modes: the SSP clock rule (pure), staleness summaries, the experiment's bookkeeping, local SGD /
DiLoCo's outer step on 2 gloo ranks against the closed form, and its checkpoints (kill, resume, bit-exact).
ASP and SSP on real parameter-server processes: tests/test_parameter_server.py."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from llama_course.coordination.sync_async import Clocks, converged, staleness_summary, summarise
from llama_course.core import checkpoint as ckpt
from llama_course.trainer import train

sys.path.insert(0, os.path.dirname(__file__))


def test_ssp_clocks_block_the_fast_worker():
    c = Clocks(range(3), bound=1)
    c.tick(0)
    assert c.may_proceed(0)                  # 1 ahead of the slowest: allowed with s = 1
    c.tick(0)
    assert not c.may_proceed(0)              # 2 ahead: waits
    c.tick(1)
    assert not c.may_proceed(0)              # worker 2 is still at 0
    c.tick(2)
    assert c.may_proceed(0)
    c.finish(1)
    c.finish(2)
    c.tick(0)
    c.tick(0)
    assert c.may_proceed(0)                  # finished workers hold nobody back


def test_asp_never_blocks():
    c = Clocks(range(2), bound=None)
    for _ in range(10):
        c.tick(0)
    assert c.may_proceed(0) and c.lead(0) == 10


def test_staleness_summary():
    s = staleness_summary({0: 5, 1: 3, 4: 2})
    assert s["pushes"] == 10 and s["max"] == 4 and s["p90"] == 4
    assert abs(s["mean"] - (3 + 8) / 10) < 1e-12
    assert staleness_summary({})["pushes"] == 0


def test_summarise_and_converged():
    recs = [{"mode": "asp", "straggler": 1.0, "step": i, "loss": 6 - 0.1 * i, "time_s": i * 0.1, "staleness": 2}
            for i in range(1, 8)]
    (row,) = summarise(recs)
    assert row["mean_staleness"] == 2 and abs(row["final_loss"] - 5.3) < 1e-9
    assert converged(recs, "asp")


def _outer_reference(start, before_outer, mu, outer_lr):
    """DiLoCo's outer loop in one process, from every replica's weights just before each average:
    delta = anchor - mean_i x_i;  b <- mu b + delta;  anchor <- anchor - eta (delta + mu b)."""
    anchor, buffer, expected = start.clone(), torch.zeros_like(start), {}
    for step in sorted(before_outer[0]):
        delta = anchor - torch.stack([seen[step] for seen in before_outer]).mean(0)
        buffer = mu * buffer + delta
        anchor = anchor - outer_lr * (delta + mu * buffer)
        expected[step] = anchor
    return expected


@pytest.mark.parametrize("outer_lr,mu", [(0.7, 0.9), (1.0, 0.0)])
def test_local_sgd_outer_step_on_two_ranks_matches_the_closed_form(outer_lr, mu):
    """DiLoCo (eta 0.7, Nesterov 0.9) and plain local SGD (eta 1, mu 0 = averaging) on 2 gloo ranks, each
    replica on its own data, H = 2: after every 2nd step both replicas hold the outer step of their
    average, computed here in one process; in between they differ. Fails with the outer step a no-op, with
    momentum ignored, or at the wrong steps."""
    import workers_sync_async as w

    from llama_course.core.testing import spawn

    H, steps = 2, 6
    (start0, after0, seen0), (start1, after1, seen1) = spawn(w.local_sgd_rounds, 2, H, outer_lr, mu, steps,
                                                            timeout=120)
    assert torch.equal(start0, start1)
    assert sorted(seen0) == sorted(seen1) == [2, 4, 6]                   # one average every H steps
    expected = _outer_reference(start0, [seen0, seen1], mu, outer_lr)
    for step in range(1, steps + 1):
        a, b = after0[step - 1], after1[step - 1]
        if step % H:
            assert not torch.equal(a, b), step                          # replicas drift between averages
        else:
            assert torch.equal(a, b), step
            torch.testing.assert_close(a, expected[step], rtol=0, atol=1e-6)
            assert not torch.allclose(seen0[step], a)                   # the outer step moved the weights


def test_local_sgd_resumes_bit_exactly_from_a_checkpoint_between_averages(tmp_path):
    """H = 3, a checkpoint every 2 steps (steps 2 and 4 fall between averages), rank 1 SIGKILLed at step 5:
    the restart resumes from step 4 with every replica's weights and inner AdamW, the anchor, the outer
    momentum and the step counter, and logs the uninterrupted run's losses and norms bit for bit.
    (Before: step 2 was committed with no rank state and the restart died loading it.)"""
    run = ["parallel.sync=local_sgd", "parallel.local_steps=3", "parallel.outer_lr=0.7",
           "parallel.outer_momentum=0.9", "cluster.num_gpus=2", "checkpoint.every_steps=2", "training.steps=6",
           "training.eval_every=0", "training.warmup_steps=1", "training.precision=fp32", "seq_len=32",
           "parallel.global_batch_size=4", "parallel.micro_batch_size=2"]
    killed = train({"model": {"preset": "tiny"}}, run + ["faults.kill=[{rank: 1, step: 5}]"], checkpoint_dir=tmp_path / "killed",
                   max_restarts=1)
    clean = train({"model": {"preset": "tiny"}}, run, checkpoint_dir=tmp_path / "clean")
    assert [r["step"] for r in killed] == list(range(1, 7))
    assert [(r["loss"], r["grad_norm"]) for r in killed] == [(r["loss"], r["grad_norm"]) for r in clean]
    latest = ckpt.find_latest(str(tmp_path / "killed"))
    assert latest.endswith("step_00000006")
    manifest = ckpt.load_manifest(latest)
    assert {"rank_00000.pt", "rank_00001.pt"} <= set(manifest["files"])   # every replica's own state
    state = ckpt.load_rank_state(latest, 1)["engine"]
    assert {"anchor", "outer_momentum", "steps"} <= set(state) and state["steps"] == 6
