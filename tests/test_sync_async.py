"""Sync modes: the SSP clock rule (pure), staleness summaries, and the experiment's bookkeeping.
Distributed runs: ASP in tests/test_parameter_server.py, local SGD / DiLoCo in tests/test_load_balancing.py."""

from __future__ import annotations

from llama_course.coordination.sync_async import Clocks, converged, staleness_summary, summarise


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
