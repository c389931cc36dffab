"""Graded tests for the load-balancing exercises (labs/exercises/load_balancing.py), points per test.

Closed forms, brute force and hand-worked cases written here; exercise 9.5 on 3 gloo processes (one launch).
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

# Exercise 9.1: proportional_split ---------------------------------------------------------------------------

@pytest.mark.points(1, exercise="9.1")
def test_proportional_split_examples(exercise):
    assert exercise.proportional_split(16, [1, 1, 1, 1 / 3]) == [5, 5, 5, 1]     # 4.8 x 3 + 1.6: remainders .8,.8,.8,.6
    assert exercise.proportional_split(10, [1, 1, 1]) == [4, 3, 3]
    assert exercise.proportional_split(0, [2, 1]) == [0, 0]
    # quotas 5, 1.5, 3.5: the leftover sequence goes to the largest *fractional part* (a tie: lower rank)
    assert exercise.proportional_split(10, [5, 1.5, 3.5]) == [5, 2, 3]


@pytest.mark.points(2, exercise="9.1")
def test_proportional_split_properties(exercise):
    rng = random.Random(9)
    for _ in range(50):
        speeds = [rng.uniform(0.1, 5) for _ in range(rng.randint(1, 8))]
        total = rng.randint(0, 200)
        shares = exercise.proportional_split(total, speeds)
        assert sum(shares) == total and all(isinstance(s, int) for s in shares)
        for s, v in zip(shares, speeds):
            assert abs(s - total * v / sum(speeds)) < 1 + 1e-9
    for bad in ((-1, [1.0]), (4, []), (4, [1.0, 0.0])):
        with pytest.raises(ValueError):
            exercise.proportional_split(*bad)


# Exercise 9.2: policy_step_time -----------------------------------------------------------------------------

@pytest.mark.points(2, exercise="9.2")
def test_policy_step_time_one_straggler(exercise):
    t = [1.0, 1.0, 1.0, 3.0]
    assert exercise.policy_step_time("none", t, 16) == pytest.approx((12.0, 16))
    step, used = exercise.policy_step_time("dynamic_batch", t, 16)
    assert step == pytest.approx(16 / (3 + 1 / 3)) and used == 16          # 4.8 s: 83% of the no-straggler speed
    step, used = exercise.policy_step_time("backup_workers", t, 16, backup=1)
    assert step == pytest.approx(4.0) and used == pytest.approx(12)


@pytest.mark.points(1, exercise="9.2")
def test_policy_step_time_general(exercise):
    rng = random.Random(4)
    for _ in range(20):
        t = [rng.uniform(0.5, 4) for _ in range(rng.randint(2, 8))]
        n, G = len(t), 64
        none, _ = exercise.policy_step_time("none", t, G)
        dyn, _ = exercise.policy_step_time("dynamic_batch", t, G)
        assert none == pytest.approx(G / n * max(t)) and dyn == pytest.approx(G / sum(1 / x for x in t))
        assert dyn <= none + 1e-12
        b = rng.randint(0, n - 1)
        step, used = exercise.policy_step_time("backup_workers", t, G, backup=b)
        assert step == pytest.approx(sorted(G / n * x for x in t)[n - b - 1]) and used == pytest.approx(G * (n - b) / n)
    with pytest.raises(ValueError):
        exercise.policy_step_time("fastest_first", [1.0], 4)
    for backup in (-1, 4, 5):                                   # backup must lie in [0, N)
        with pytest.raises(ValueError):
            exercise.policy_step_time("backup_workers", [1.0, 1.0, 1.0, 3.0], 16, backup=backup)


# Exercise 9.3: assign_by_cost -------------------------------------------------------------------------------

@pytest.mark.points(1, exercise="9.3")
def test_assign_by_cost_example(exercise):
    lengths = [10, 200, 30, 180, 50, 40]
    # 200 -> r0, 180 -> r1, 50 -> r1 (180 < 200), 40 -> r0 (200 < 230), 30 -> r1 (230 < 240), 10 -> r0 (240 < 260)
    ranks = exercise.assign_by_cost(lengths, 2)
    assert ranks == [[1, 5, 0], [3, 4, 2]]                     # loads 250 and 260, each longest first


@pytest.mark.points(2, exercise="9.3")
def test_assign_by_cost_vs_brute_force(exercise):
    rng = random.Random(5)
    for _ in range(25):
        k = rng.choice([2, 3])
        lengths = [rng.randint(1, 512) for _ in range(rng.randint(1, 8))]
        ranks = exercise.assign_by_cost(lengths, k)
        assert len(ranks) == k and sorted(i for r in ranks for i in r) == list(range(len(lengths)))
        for r in ranks:
            assert [lengths[i] for i in r] == sorted((lengths[i] for i in r), reverse=True)
        worst = max(sum(lengths[i] for i in r) for r in ranks)
        best = min(max(sum(n for n, o in zip(lengths, own) if o == j) for j in range(k))
                   for own in itertools.product(range(k), repeat=len(lengths)))
        assert worst <= 4 / 3 * best + 1e-9
    with pytest.raises(ValueError):
        exercise.assign_by_cost([1, 2], 0)
    assert exercise.assign_by_cost([3, 1, 2], 1) == [[0, 2, 1]]             # one rank: everything, longest first


# Exercise 9.4: least_loaded_dispatch ------------------------------------------------------------------------

@pytest.mark.points(2, exercise="9.4")
def test_least_loaded_dispatch_hand_worked(exercise):
    # server 0 twice as fast as server 1
    lat = exercise.least_loaded_dispatch([0.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 1.0], [2.0, 1.0])
    # r0: s0 ends 1 (s1 would end 2); r1: s0 ends 2, s1 ends 2 -> tie, s0; r2: s0 ends 3, s1 ends 2 -> s1;
    # r3 at t=1: s0 free at 2 -> ends 2.5, s1 free at 2 -> ends 3 -> s0
    assert lat == pytest.approx([1.0, 2.0, 2.0, 1.5])
    # server 1 four times as fast: the end time, not the queue, decides. r0, r1, r2 all go to s1 (ends 1, 2,
    # 3, where s0 would end at 4); r3 at t=1: s0 ends 3, s1 ends 3.5 -> s0. A dispatcher blind to speed
    # sends r0 to the idle s0 (tie on an empty queue) and it ends at 4.
    lat = exercise.least_loaded_dispatch([0.0, 0.0, 0.0, 1.0], [4.0, 4.0, 4.0, 2.0], [1.0, 4.0])
    assert lat == pytest.approx([1.0, 2.0, 3.0, 2.0])


@pytest.mark.points(1, exercise="9.4")
def test_least_loaded_dispatch_beats_round_robin(exercise):
    rng = random.Random(0)
    speeds = [1.0, 1.0, 1.0, 1 / 3]
    t, arrivals, works = 0.0, [], []
    for _ in range(3000):
        t += rng.expovariate(0.8 * sum(speeds))
        arrivals.append(t)
        works.append(rng.expovariate(1.0))
    lat = exercise.least_loaded_dispatch(arrivals, works, speeds)
    free, rr = [0.0] * 4, []
    for k, (a, w) in enumerate(zip(arrivals, works)):
        j = k % 4
        free[j] = max(a, free[j]) + w / speeds[j]
        rr.append(free[j] - a)
    assert len(lat) == len(arrivals) and min(lat) >= min(works) / max(speeds) - 1e-12
    assert sum(lat) / len(lat) < 0.5 * sum(rr) / len(rr)
    assert all(x >= w / max(speeds) - 1e-12 for x, w in zip(lat, works))
    assert math.isfinite(sum(lat))


# Exercise 9.5: weighted_gradient_all_reduce on 3 gloo processes --------------------------------------------

@pytest.fixture(scope="module")
def weighted_results(exercise):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workers_load_balancing as workers

    from llama_course.core.testing import spawn

    return spawn(workers.check_weighted_gradient, 3, exercise.__name__, timeout=90)


@pytest.mark.points(4, exercise="9.5")
def test_weighted_gradient_matches_one_process(weighted_results):
    for rank, out in enumerate(weighted_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert len(out["errors"]) == 3
        for case, err in enumerate(out["errors"]):
            assert err < 1e-12, f"rank {rank}, shares case {case}: max error {err} against the whole-batch gradient"
        for case, wire in enumerate(out["wire"]):
            used = {k: b for k, b in wire["bytes"].items() if b}
            assert set(used) == {"all_reduce"} and used["all_reduce"] <= 5 * 8 + 8, \
                f"rank {rank}, case {case}: {used} on the wire; one all-reduce of the 5-element gradient suffices"
