"""Cluster scheduling against known results: SJF is optimal for mean completion time on one resource
(brute force over every order), SRTF beats any non-preemptive order there, FIFO keeps arrival order,
gang scheduling never overcommits, EASY backfilling fills holes without delaying the head."""

import itertools
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import cluster_scheduling as cs
from simulator.cluster_scheduling import Job, jain_index, schedule, workload

durations = st.lists(st.floats(0.1, 100), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(durations)
def test_sjf_minimises_mean_completion_time_on_one_gpu(ds):
    jobs = [Job(i, 0.0, 1, d) for i, d in enumerate(ds)]
    got = schedule(jobs, 1, "sjf").metrics()["mean_jct_s"]
    best = min(sum(itertools.accumulate(order)) / len(ds) for order in itertools.permutations(ds))
    assert got == pytest.approx(best, rel=1e-9)
    fifo = schedule(jobs, 1, "fifo").metrics()["mean_jct_s"]
    assert got <= fifo * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0.1, 30)), min_size=1, max_size=8))
def test_srtf_without_preemption_cost_beats_sjf_and_fifo_on_one_gpu(spec):
    jobs = [Job(i, a, 1, d) for i, (a, d) in enumerate(spec)]
    srtf = schedule(jobs, 1, "srtf", preempt_s=0).metrics()["mean_jct_s"]
    for policy in ("sjf", "fifo"):
        assert srtf <= schedule(jobs, 1, policy).metrics()["mean_jct_s"] * (1 + 1e-9) + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.integers(1, 8), st.floats(0.1, 30)), min_size=1, max_size=12),
       st.sampled_from(cs.POLICIES), st.booleans())
def test_gang_scheduling_never_overcommits_and_every_job_finishes(spec, policy, backfill):
    jobs = [Job(i, a, g, d, priority=i % 3) for i, (a, g, d) in enumerate(spec)]
    r = schedule(jobs, 8, policy, backfill, preempt_s=1.0)
    assert all(0 <= used <= 8 for _, used in r.usage)
    for j in r.jobs:
        assert j.start_s >= j.arrival_s - 1e-9 and j.finish_s >= j.start_s + j.duration_s - 1e-6
    # GPU-time actually used is at least the work (more only with preemption costs)
    area = sum(used * (t1 - t0) for (t0, used), (t1, _) in zip(r.usage, r.usage[1:]))
    assert area == pytest.approx(sum(j.gpus * (j.duration_s + j.preemptions * 1.0) for j in r.jobs), rel=1e-6, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.integers(1, 8), st.floats(0.1, 30)), min_size=1, max_size=12))
def test_fifo_starts_jobs_in_arrival_order(spec):
    jobs = [Job(i, a, g, d) for i, (a, g, d) in enumerate(spec)]
    r = schedule(jobs, 8, "fifo")
    order = sorted(r.jobs, key=lambda j: (j.arrival_s, j.id))
    assert all(a.start_s <= b.start_s + 1e-9 for a, b in zip(order, order[1:]))


def test_easy_backfilling_fills_the_hole_without_delaying_the_head():
    jobs = [Job(0, 0.0, 3, 10.0), Job(1, 0.1, 4, 1.0), Job(2, 0.2, 1, 5.0), Job(3, 0.3, 1, 20.0)]
    plain = {j.id: j for j in schedule(jobs, 4, "fifo").jobs}
    easy = {j.id: j for j in schedule(jobs, 4, "fifo", backfill=True).jobs}
    assert plain[2].start_s == pytest.approx(11.0)             # waits behind the 4-GPU head
    assert easy[2].start_s == pytest.approx(0.2)               # ends (5.2) before the head's shadow time (10)
    assert easy[1].start_s == pytest.approx(plain[1].start_s) == pytest.approx(10.0)   # head not delayed
    assert easy[3].start_s >= 10.0                              # would delay the head: not backfilled


def test_priority_runs_the_urgent_job_first():
    jobs = [Job(0, 0.0, 1, 5.0, priority=0), Job(1, 1.0, 1, 5.0, priority=0), Job(2, 2.0, 1, 5.0, priority=2)]
    r = {j.id: j for j in schedule(jobs, 1, "priority").jobs}
    assert r[2].start_s == pytest.approx(5.0) and r[1].start_s == pytest.approx(10.0)


def test_preemption_pays_its_checkpoint_cost():
    jobs = [Job(0, 0.0, 1, 10.0), Job(1, 2.0, 1, 1.0)]
    r = {j.id: j for j in schedule(jobs, 1, "srtf", preempt_s=0.5).jobs}
    assert r[1].finish_s == pytest.approx(3.0) and r[0].preemptions == 1
    assert r[0].finish_s == pytest.approx(11.5)


def test_jain_index_bounds():
    assert jain_index([1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)


def test_workload_distributions_and_policies_on_a_realistic_mix():
    jobs = workload(300, 64, load=0.9, seed=1)
    assert all(j.gpus in cs.SIZE_CHOICES and j.gpus <= 64 for j in jobs)
    assert sum(j.gpus == 1 for j in jobs) / len(jobs) == pytest.approx(0.45, abs=0.08)
    rows = {r["policy"]: r for r in cs.compare(jobs, 64, backfill=True)}
    assert rows["srtf"]["mean_jct_s"] < rows["fifo"]["mean_jct_s"]
    assert rows["sjf"]["mean_jct_s"] < rows["fifo"]["mean_jct_s"]
    for r in rows.values():
        assert 0 < r["utilisation"] <= 1 and 0 < r["jain_fairness"] <= 1
        assert r["p50_jct_s"] <= r["p95_jct_s"] <= r["p99_jct_s"]


def test_cli_prints_json_and_a_plot_is_drawn(tmp_path):
    out = subprocess.run([sys.executable, "-m", "simulator.cluster_scheduling", "--policy", "sjf", "--jobs", "50",
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows[0]["policy"] == "sjf" and rows[0]["jobs"] == 50
    jobs = workload(50, 16)
    cs.plot_jct_cdf([schedule(jobs, 16, p) for p in ("fifo", "sjf")], str(tmp_path / "cdf.png"))
    assert (tmp_path / "cdf.png").stat().st_size > 1000
