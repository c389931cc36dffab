"""Simulator sync modes: staleness of ASP / SSP with a straggler, BSP's waiting, local SGD's saving."""

import pytest

from simulator.simulate import simulate
from simulator.sync_async import asp_staleness, staleness_distribution


def test_asp_staleness_about_n_minus_one_and_straggler_stalest():
    equal = staleness_distribution([1.0] * 4, "asp", updates=800)
    assert equal["mean"] == pytest.approx(3.0, abs=0.2) and equal["blocked_share"] == 0
    skew = staleness_distribution([1, 1, 1, 3], "asp", updates=1200)
    assert skew["max"] >= 8                                   # the straggler's gradients: ~3 x 3 pushes old
    assert skew["updates_per_s"] == pytest.approx(3 + 1 / 3, rel=0.05)


def test_ssp_bounds_staleness_and_blocks_fast_workers():
    ssp = staleness_distribution([1, 1, 1, 3], "ssp", staleness=1, updates=1200)
    asp = staleness_distribution([1, 1, 1, 3], "asp", updates=1200)
    assert ssp["max"] < asp["max"] and ssp["blocked_share"] > 0.3
    bsp = staleness_distribution([1, 1, 1, 3], "bsp")
    assert bsp["mean"] == 0 and bsp["blocked_share"] == pytest.approx(0.5)


def test_local_sgd_divides_exposed_communication():
    base = {"model": {"preset": "tiny"}, "seq_len": 64, "training": {"precision": "fp32"},
            "parallel": {"dp": 4, "global_batch_size": 8, "overlap": False}}
    full = simulate(base)
    sync, scalars = full["breakdown_s"]["exposed_comm"], full["comm_s"]["step_scalars"]
    local = simulate({**base, "parallel": {**base["parallel"], "sync": "local_sgd", "local_steps": 4}})
    # the gradient average happens every 4th step; the loss is still averaged (a scalar) every step, and the
    # mean rank still waits for the slowest of the processes sharing the cores (straggle_wait_s)
    wait = full["straggle_wait_s"]
    assert 0 < scalars < sync - wait and local["straggle_wait_s"] == pytest.approx(wait)
    assert local["breakdown_s"]["exposed_comm"] == pytest.approx(wait + scalars + (sync - wait - scalars) / 4, rel=1e-6)


def test_asp_staleness_closed_form_matches_the_simulated_mean():
    """The push-weighted mean of the closed form is the simulated ASP mean staleness (a fast server)."""
    for speeds in ([1.0, 1.0, 1.0], [1.0, 1.0, 3.0], [0.5, 2.0]):
        per_worker = asp_staleness(speeds)
        rates = [1 / c for c in speeds]
        weighted = sum(r * s for r, s in zip(rates, per_worker)) / sum(rates)
        assert staleness_distribution(speeds, "asp", updates=6000)["mean"] == pytest.approx(weighted, rel=0.05)
    assert asp_staleness([2.0] * 4) == pytest.approx([3.0] * 4)
