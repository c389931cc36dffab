"""Failures, checkpoints and goodput: the simulated run against Daly's closed form, Young's interval against
the simulated optimum, and Llama 3's 16,384-GPU run (>90% effective training time at a 3.1 h job MTBF)."""

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import fault_tolerance as ft
from simulator.config import load_config
from simulator.simulate import simulate

HOUR = 3600.0


def test_job_mtbf_scales_with_gpus_and_llama3_rate():
    assert ft.job_mtbf_s(ft.gpu_mtbf_for_job(3.1, 16384), 16384) == pytest.approx(3.1 * HOUR)
    assert ft.job_mtbf_s(1000, 10) == pytest.approx(100 * HOUR)
    # 419 unexpected interruptions in 54 days is a job MTBF of about 3.1 hours
    assert 54 * 24 / 419 == pytest.approx(3.1, abs=0.05)


def test_young_and_daly_intervals():
    c, m = 60.0, 3 * HOUR
    assert ft.young_interval(c, m) == pytest.approx(math.sqrt(2 * 60 * 10800))       # 1138 s (docs)
    assert ft.daly_interval(c, m) == pytest.approx(ft.young_interval(c, m) - c)
    # the exact optimum of Daly's formula is close to Young's when C << M
    assert ft.optimal_interval(c, m) == pytest.approx(ft.young_interval(c, m), rel=0.05)
    # and the closed form is maximised there: moving away in either direction loses goodput
    best = ft.optimal_interval(c, m, 600)
    g = ft.expected_goodput(best, c, m, 600)
    assert g > ft.expected_goodput(best / 2, c, m, 600) and g > ft.expected_goodput(best * 2, c, m, 600)


def test_simulated_goodput_matches_dalys_formula():
    """Exponential failures drawn per GPU: the Monte Carlo goodput is Daly's exact expectation."""
    m, c, r, n = 2 * HOUR, 120.0, 300.0, 512
    for tau in (600.0, 1800.0, 5400.0):
        runs = [ft.simulate_run(30 * 86400, tau, c, r, m * n, n, seed=s) for s in range(3)]
        simulated = sum(x.useful_s for x in runs) / sum(x.wall_s for x in runs)
        assert simulated == pytest.approx(ft.expected_goodput(tau, c, m, r), abs=0.012)


def test_young_daly_interval_is_the_simulated_optimum():
    """Sweep the interval in the simulator; the best one lies within a factor 1.6 of sqrt(2 C M), and the
    goodput at Young's interval is within half a percent of the best simulated."""
    m, c, r, n = 3 * HOUR, 60.0, 600.0, 1024
    young = ft.young_interval(c, m)
    intervals = [young * f for f in (0.125, 0.25, 0.5, 0.7, 1.0, 1.4, 2.0, 4.0, 8.0)]
    sweep = ft.interval_sweep(intervals, 40 * 86400, c, r, m * n, n, seeds=3)
    best_tau, best = max(sweep, key=lambda x: x[1])
    assert young / 1.6 <= best_tau <= young * 1.6
    at_young = dict(sweep)[young]
    assert at_young >= best - 0.005
    assert sweep[0][1] < best - 0.05 and sweep[-1][1] < best - 0.05   # far off the optimum costs a lot


def test_llama3_16k_gpus_keeps_over_90_percent_effective_training_time():
    """Per-GPU MTBF chosen for a 3.1 h job MTBF on 16,384 GPUs: about 419 failures in 54 days, goodput > 90%."""
    runs = [ft.llama3_check(seed=s) for s in range(3)]
    for s in runs:
        assert 50 < s.wall_s / 86400 < 58
        assert 340 < s.failures < 500                     # Llama 3: 419 unexpected interruptions
        assert 0.90 < s.goodput < 0.97
    assert 380 < statistics.mean(s.failures for s in runs) < 470


def test_weibull_draws_have_the_stated_mean_and_infant_mortality_fails_more_early():
    rng = random.Random(0)
    for k in (0.7, 1.0, 2.0):
        xs = [ft.draw_time_to_failure(rng, 100.0, k) for _ in range(20000)]
        assert statistics.mean(xs) == pytest.approx(100.0, rel=0.05)
    # all GPUs new at t = 0: with k < 1 the early hazard is high, so a short run sees more failures
    kw = dict(work_s=5 * 86400, interval_s=1800, checkpoint_s=30, restart_s=300, gpu_mtbf_s=1e6, n_gpus=256)
    exp = sum(ft.simulate_run(**kw, seed=s).failures for s in range(3))
    infant = sum(ft.simulate_run(**kw, weibull_shape=0.5, seed=s).failures for s in range(3))
    wearout = sum(ft.simulate_run(**kw, weibull_shape=3.0, seed=s).failures for s in range(3))
    assert infant > 1.5 * exp and wearout < exp / 3


@settings(max_examples=30, deadline=None)
@given(tau=st.floats(10, 5000), c=st.floats(0, 300), r=st.floats(0, 1000), seed=st.integers(0, 100))
def test_wall_time_adds_up(tau, c, r, seed):
    s = ft.simulate_run(20000.0, tau, c, r, 50000.0 * 8, 8, seed=seed)
    assert s.wall_s == pytest.approx(s.useful_s + s.checkpoint_s + s.lost_s + s.restart_s, rel=1e-9)
    assert 0 < s.goodput <= 1
    if s.failures == 0:
        assert s.lost_s == 0 and s.restart_s == 0


def test_simulate_reports_goodput_and_time_to_train_with_failures():
    # the published Llama 3 run (ZeRO-1 under tp x pp, which the course runtime does not run yet)
    base = load_config("configs/llama3-405b-h100.yaml", runtime=False)
    plain = simulate(base)
    assert "expected_goodput" not in plain
    cfg = load_config("configs/llama3-405b-h100.yaml", [f"faults.gpu_mtbf_hours={ft.gpu_mtbf_for_job(3.1, 16384)}"],
                      runtime=False)
    out = simulate(cfg)
    assert out["step_time_s"] == pytest.approx(plain["step_time_s"])   # failures do not change the step
    f = out["fault_tolerance"]
    assert f["job_mtbf_s"] == pytest.approx(3.1 * HOUR)
    assert f["checkpoint_write_s"] == pytest.approx(ft.LLAMA3_CHECKPOINT_S, rel=0.02)
    assert 0.9 < out["expected_goodput"] < 0.97
    assert out["time_to_train_with_failures_s"] == pytest.approx(plain["time_to_train_s"] / out["expected_goodput"])
    # a slower file system and a fixed interval cost more
    slow = simulate(load_config("configs/llama3-405b-h100.yaml", [f"faults.gpu_mtbf_hours={f['job_mtbf_s'] * 16384 / 3600}",
                                                                  "checkpoint.write_GBps=0.1"], runtime=False))
    assert slow["expected_goodput"] < out["expected_goodput"]
    fixed = simulate(load_config("configs/tiny.yaml", ["checkpoint.every_steps=10"]))
    assert fixed["fault_tolerance"]["checkpoint_interval_s"] == pytest.approx(10 * fixed["step_time_s"])
