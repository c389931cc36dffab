"""Graded tests for the cluster-scheduling exercises (labs/exercises/cluster_scheduling.py), points per test.

Closed forms and brute force written here; exercises 13.3 and 13.4 are held to hand-computed schedules and
to the SimPy cluster of simulator/cluster_scheduling.py on random workloads (the package, not the solution).
"""

from __future__ import annotations

import itertools
import random

import pytest

from simulator.cluster_scheduling import Job, schedule

# Exercises 13.1 and 13.2: SJF on one machine ------------------------------------------------------------


@pytest.mark.points(1, exercise="13.1")
def test_sjf_order(exercise):
    assert list(exercise.sjf_order({"a": 3.0, "b": 1.0, "c": 2.0})) == ["b", "c", "a"]
    assert list(exercise.sjf_order({2: 5.0, 1: 5.0, 0: 7.0})) == [1, 2, 0]


@pytest.mark.points(2, exercise="13.2")
def test_mean_completion_time(exercise):
    d = {"a": 3.0, "b": 1.0, "c": 2.0}
    assert exercise.mean_completion_time(d, ["a", "b", "c"]) == pytest.approx((3 + 4 + 6) / 3)
    assert exercise.mean_completion_time(d, ["b", "c", "a"]) == pytest.approx((1 + 3 + 6) / 3)
    assert exercise.mean_completion_time({}, []) == 0
    with pytest.raises(ValueError):
        exercise.mean_completion_time(d, ["a", "b"])


@pytest.mark.points(2, exercise="13.2")
def test_sjf_is_optimal(exercise):
    rng = random.Random(13)
    for _ in range(20):
        d = {i: rng.choice([1.0, 2.0, 3.5, 7.0, 10.0]) for i in range(rng.randint(1, 6))}
        best = min(sum(itertools.accumulate(d[j] for j in perm)) / len(d) for perm in itertools.permutations(d))
        assert exercise.mean_completion_time(d, list(exercise.sjf_order(d))) == pytest.approx(best)


# Exercises 13.3 and 13.4: FIFO gang scheduling, EASY backfilling ----------------------------------------

EXAMPLE = [(0, 4, 100), (10, 8, 50), (20, 2, 30), (25, 2, 200), (30, 4, 40)]      # the lab's 5 jobs, 8 GPUs


def random_jobs(seed: int, n: int = 40, gpus: int = 16) -> list:
    rng = random.Random(seed)
    t, jobs = 0.0, []
    for _ in range(n):
        t += rng.expovariate(1 / 40.0)
        jobs.append((t, rng.choice([1, 1, 2, 4, 8, gpus]), rng.uniform(5.0, 400.0)))
    return jobs


def simulated_starts(jobs: list, gpus: int, backfill: bool) -> list:
    result = schedule([Job(i, a, g, d) for i, (a, g, d) in enumerate(jobs)], gpus, "fifo", backfill)
    return [j.start_s for j in sorted(result.jobs, key=lambda j: j.id)]


@pytest.mark.points(2, exercise="13.3")
def test_gang_schedule_example(exercise):
    assert list(exercise.gang_schedule(EXAMPLE, 8)) == pytest.approx([0, 100, 150, 150, 150])
    with pytest.raises(ValueError):
        exercise.gang_schedule([(0, 9, 1)], 8)
    with pytest.raises(ValueError):
        exercise.gang_schedule([(0, 2, 1), (1, 0, 5)], 8)                 # a job needing no GPU


@pytest.mark.points(3, exercise="13.3")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gang_schedule_matches_the_cluster(exercise, seed):
    jobs = random_jobs(seed)
    got = list(exercise.gang_schedule(jobs, 16))
    assert got == pytest.approx(simulated_starts(jobs, 16, False))
    for (a, _, _), s in zip(jobs, got):
        assert s >= a - 1e-9


@pytest.mark.points(2, exercise="13.4")
def test_backfill_example(exercise):
    # job 2 fits and ends (50 s) before the 8-GPU head's reservation at 100 s; job 4 likewise from 50 s;
    # job 3 (200 s) would delay the head: it waits
    assert list(exercise.backfill(EXAMPLE, 8)) == pytest.approx([0, 100, 20, 150, 50])


@pytest.mark.points(2, exercise="13.4")
def test_backfill_extra_gpus(exercise):
    """10 GPUs; A (6 GPUs, 100 s) runs; the head B needs 8: it is reserved at A's end (shadow 100 s) with
    10 - 8 = 2 extra GPUs. C (2 GPUs, 500 s) outlasts the shadow but fits in the extra GPUs: it starts, and
    uses them up, so D (2 GPUs, 500 s) must wait or it would delay B."""
    jobs = [(0, 6, 100), (1, 8, 50), (2, 2, 500), (3, 2, 500)]
    assert list(exercise.backfill(jobs, 10)) == pytest.approx([0, 100, 2, 150])
    # C ends exactly at the shadow (2 + 98 = 100): it delays nothing and leaves the extra GPUs to D
    jobs = [(0, 6, 100), (1, 8, 50), (2, 2, 98), (3, 2, 500), (4, 2, 500)]
    assert list(exercise.backfill(jobs, 10)) == pytest.approx([0, 100, 2, 3, 150])
    # all at 0 on 8 GPUs: A (4 GPUs, 10 s) runs, the head B needs 5: shadow 10 s, 8 - 5 = 3 extra GPUs.
    # C (1 GPU, 2 s) ends before the shadow: it takes a free GPU but none of the extra ones, so D (3 GPUs,
    # 100 s), which outlasts the shadow, still fits in the 3 extra GPUs and starts at 0 too
    jobs = [(0, 4, 10), (0, 5, 5), (0, 1, 2), (0, 3, 100)]
    assert list(exercise.backfill(jobs, 8)) == pytest.approx([0, 10, 0, 0])
    # the same instant, 10 GPUs: the head B (7 GPUs) leaves 3 extra at the shadow (10 s); C (3 GPUs, 100 s)
    # takes all 3, so D (2 GPUs, 100 s) may not start on the 3 free GPUs in the same pass: it waits for B's end
    jobs = [(0, 4, 10), (0, 7, 5), (0, 3, 100), (0, 2, 100)]
    assert list(exercise.backfill(jobs, 10)) == pytest.approx([0, 10, 0, 15])


@pytest.mark.points(4, exercise="13.4")
@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_backfill_matches_the_cluster(exercise, seed):
    jobs = random_jobs(seed, n=50)
    got = list(exercise.backfill(jobs, 16))
    assert got == pytest.approx(simulated_starts(jobs, 16, True))


@pytest.mark.points(1, exercise="13.4")
def test_backfill_never_hurts_utilisation_here(exercise):
    """On these workloads backfilling finishes everything no later than strict FIFO."""
    for seed in (8, 9):
        jobs = random_jobs(seed)
        fifo = max(s + d for s, (_, _, d) in zip(exercise.gang_schedule(jobs, 16), jobs))
        easy = max(s + d for s, (_, _, d) in zip(exercise.backfill(jobs, 16), jobs))
        assert easy <= fifo + 1e-9


# Exercise 13.5: jain_fairness ---------------------------------------------------------------------------

@pytest.mark.points(2, exercise="13.5")
def test_jain_fairness(exercise):
    assert exercise.jain_fairness([1, 1, 1, 1]) == pytest.approx(1.0)
    assert exercise.jain_fairness([5, 0, 0, 0]) == pytest.approx(0.25)
    assert exercise.jain_fairness([1, 2, 3]) == pytest.approx(36 / (3 * 14))
    for bad in ([], [1, -1], [0, 0]):
        with pytest.raises(ValueError):
            exercise.jain_fairness(bad)
