"""Graded tests for the sync/async exercises (labs/exercises/sync_async.py), points per test.

Closed forms and direct computations written here; exercise 8.5 runs on 2 gloo processes (one launch).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

# Exercise 8.1: bsp_step_time --------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="8.1")
def test_bsp_step_time_straggler(exercise):
    step, waiting = exercise.bsp_step_time([1.0, 1.0, 1.0, 3.0], 0.5)
    assert step == pytest.approx(3.5)
    assert waiting == pytest.approx(1 - 6 / 12)          # 3 fast workers idle 2 s each of 4 x 3 s


@pytest.mark.points(1, exercise="8.1")
def test_bsp_step_time_balanced_and_random(exercise):
    assert exercise.bsp_step_time([2.0, 2.0], 0.1) == pytest.approx((2.1, 0.0))
    assert exercise.bsp_step_time([0.25, 0.5], 0.0) == pytest.approx((0.5, 0.25))     # sub-second steps
    assert exercise.bsp_step_time([0.0, 0.0], 0.5) == pytest.approx((0.5, 0.0))       # nothing to wait for
    rng = random.Random(8)
    for _ in range(20):
        c = [rng.uniform(0.1, 5) for _ in range(rng.randint(1, 16))]
        step, waiting = exercise.bsp_step_time(c, 0.2)
        assert step == pytest.approx(max(c) + 0.2)
        assert waiting == pytest.approx(sum(max(c) - x for x in c) / (len(c) * max(c)))
    with pytest.raises(ValueError):
        exercise.bsp_step_time([], 0.1)


# Exercise 8.2: asp_staleness --------------------------------------------------------------------------------

@pytest.mark.points(1, exercise="8.2")
def test_asp_staleness_equal_workers(exercise):
    for n in (1, 2, 4, 16):
        assert exercise.asp_staleness([0.7] * n) == pytest.approx([n - 1] * n)


@pytest.mark.points(2, exercise="8.2")
def test_asp_staleness_straggler(exercise):
    s = exercise.asp_staleness([1.0, 1.0, 1.0, 3.0])
    assert s == pytest.approx([2 + 1 / 3] * 3 + [9.0])      # fast: 2 fast peers + 1/3 of a straggler; slow: 3 x 3
    rng = random.Random(2)
    for _ in range(10):
        c = [rng.uniform(0.5, 4) for _ in range(5)]
        expected = [sum(ci / cj for j, cj in enumerate(c) if j != i) for i, ci in enumerate(c)]
        assert exercise.asp_staleness(c) == pytest.approx(expected)


# Exercise 8.3: ssp_may_proceed ------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="8.3")
def test_ssp_may_proceed(exercise):
    clocks = {0: 5, 1: 3, 2: 4}
    assert exercise.ssp_may_proceed(clocks, 0, 2)                # 5 - 3 = 2 <= 2
    assert not exercise.ssp_may_proceed(clocks, 0, 1)
    assert exercise.ssp_may_proceed(clocks, 1, 0)                # the slowest always may (it is behind)
    assert not exercise.ssp_may_proceed(clocks, 2, 0)            # bound 0: lockstep (BSP)
    assert exercise.ssp_may_proceed(clocks, 0, None)             # ASP
    assert exercise.ssp_may_proceed(clocks, 0, 1, finished={1})  # the finished straggler holds nobody back
    assert exercise.ssp_may_proceed({0: 9, 1: 2}, 0, 0, finished=[1])
    assert exercise.ssp_may_proceed({0: 4}, 0, 0)


# Exercise 8.4: local_sgd_average ----------------------------------------------------------------------------

@pytest.mark.points(1, exercise="8.4")
def test_local_sgd_plain_average(exercise):
    anchor = np.array([1.0, 1.0])
    reps = [np.array([0.0, 2.0]), np.array([1.0, 0.0]), np.array([2.0, 1.0])]
    x, b = exercise.local_sgd_average(anchor, reps, np.zeros(2))
    assert np.allclose(x, [1.0, 1.0]) and np.allclose(b, [0.0, 0.0])
    x, b = exercise.local_sgd_average(np.zeros(2), reps, np.zeros(2))
    assert np.allclose(x, [1.0, 1.0]) and np.allclose(b, [-1.0, -1.0])


@pytest.mark.points(2, exercise="8.4")
def test_local_sgd_diloco_nesterov(exercise):
    rng = np.random.default_rng(0)
    anchor, buf = rng.normal(size=4), rng.normal(size=4)
    reps = [anchor - rng.normal(size=4) * 0.1 for _ in range(3)]
    saved = (anchor.copy(), buf.copy(), [r.copy() for r in reps])
    x, b = exercise.local_sgd_average(anchor, reps, buf, 0.7, 0.9)
    delta = anchor - sum(reps) / 3
    b_ref = 0.9 * buf + delta
    assert np.allclose(b, b_ref)
    assert np.allclose(x, anchor - 0.7 * (delta + 0.9 * b_ref))
    assert np.array_equal(anchor, saved[0]) and np.array_equal(buf, saved[1]), "the inputs were modified"


# Exercise 8.5: diloco_outer_step on 2 gloo processes --------------------------------------------------------

@pytest.fixture(scope="module")
def diloco_results(exercise):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workers_sync_async as workers

    from llama_course.core.testing import spawn

    return spawn(workers.check_diloco_outer_step, 2, exercise.__name__, timeout=90)


@pytest.mark.points(3, exercise="8.5")
def test_diloco_outer_step_matches_the_formula(diloco_results):
    for rank, out in enumerate(diloco_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert len(out["anchor"]) == 3
        for t, (a, ref) in enumerate(zip(out["anchor"], out["reference"])):
            assert float((a - ref).abs().max()) < 1e-12, f"rank {rank}, round {t}: anchor differs from the formula"
        assert max(out["buffer_error"]) < 1e-12, f"rank {rank}: outer momentum buffer differs"


@pytest.mark.points(1, exercise="8.5")
def test_diloco_outer_step_one_all_reduce_of_the_weights(diloco_results):
    """Recorded per round: one all-reduce of the Psi weights (float64 here), nothing else."""
    for rank, out in enumerate(diloco_results):
        assert not out["error"], out["error"]
        for t, wire in enumerate(out["wire"]):
            got = {k: v for k, v in wire["bytes"].items() if v}
            assert got == {"all_reduce": out["n"] * 8} and len(wire["calls"]) == 1, \
                f"rank {rank}, round {t}: {wire['calls']}; DiLoCo all-reduces the {out['n']} weights once"


@pytest.mark.points(1, exercise="8.5")
def test_diloco_outer_step_replicas_restart_identical(diloco_results):
    for out in diloco_results:
        assert not out["error"], out["error"]
        for p, a in zip(out["params"], out["anchor"]):
            assert bool((p == a).all()), "params must be overwritten with the new anchor"
    for t in range(3):
        assert bool((diloco_results[0]["params"][t] == diloco_results[1]["params"][t]).all())
