"""Graded tests for the pipeline-parallel exercises (labs/exercises/pipeline_parallel.py), points per test.

Closed forms and a small event simulation written here; exercise 5.5 runs on 3 gloo processes against a
single-process forward and backward of the same model; exercise 5.6 is also held to the simulator's order
(simulator/pipeline_parallel.py, the package, not the solution).
"""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))      # the spawned workers import these by name

# Exercise 5.1: bubble_fraction ---------------------------------------------------------------------------


@pytest.mark.points(2, exercise="5.1")
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_bubble_fraction_gpipe_1f1b(exercise, schedule):
    for p, m in [(4, 8), (8, 32), (2, 1), (16, 64), (1, 5)]:
        # step = (m + p - 1)(tf + tb), busy = m (tf + tb)
        assert exercise.bubble_fraction(schedule, p, m) == pytest.approx(1 - m / (m + p - 1))


@pytest.mark.points(2, exercise="5.1")
def test_bubble_fraction_interleaved(exercise):
    for p, m, v in [(4, 8, 2), (8, 16, 4), (2, 4, 3)]:
        assert exercise.bubble_fraction("interleaved_1f1b", p, m, v) == pytest.approx((p - 1) / (v * m + p - 1))
    assert exercise.bubble_fraction("interleaved_1f1b", 4, 8, 1) == pytest.approx(3 / 11)


@pytest.mark.points(1, exercise="5.1")
@pytest.mark.parametrize("args", [("zigzag", 4, 8, 1), ("1f1b", 0, 8, 1), ("gpipe", 4, 0, 1),
                                  ("interleaved_1f1b", 4, 8, 0)])
def test_bubble_fraction_rejects_bad_input(exercise, args):
    with pytest.raises(ValueError):
        exercise.bubble_fraction(*args)


# Exercise 5.2: one_f_one_b_order -------------------------------------------------------------------------

def run_orders(orders: list, t_f: float = 1.0, t_b: float = 2.0, t_w: float = 1.0) -> tuple:
    """Execute every rank's order with the pipeline's dependencies: (makespan, per-rank peak in flight).

    F(i) on rank r waits for F(i) on r-1, B(i) on r waits for B(i) on r+1; free communication. Raises
    AssertionError on a deadlock. Orders with W tasks (zero bubble, the backward split): B(i) is the input
    gradient r-1 waits for, W(i) the weight gradient, which waits only for B(i) on its own rank, and a
    micro-batch is in flight from its F to its W (else to its B)."""
    p = len(orders)
    release = "W" if any(kind == "W" for order in orders for kind, _ in order) else "B"
    done, clock, pos, held, peak = {}, [0.0] * p, [0] * p, [0] * p, [0] * p
    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pos[r] < len(orders[r]):
                kind, i = orders[r][pos[r]]
                dep = (kind, i, r - 1) if kind == "F" else (kind, i, r + 1)
                if kind == "B" and r == p - 1:
                    dep = ("F", i, r)
                if kind == "F" and r == 0:
                    dep = None
                if kind == "W":
                    dep = ("B", i, r)
                if dep is not None and dep not in done:
                    break
                start = max(clock[r], done[dep] if dep else 0.0)
                clock[r] = start + {"F": t_f, "B": t_b, "W": t_w}[kind]
                done[(kind, i, r)] = clock[r]
                held[r] += 1 if kind == "F" else -1 if kind == release else 0
                peak[r] = max(peak[r], held[r])
                pos[r] += 1
                progress = True
    assert all(pos[r] == len(orders[r]) for r in range(p)), "the orders deadlock"
    return max(clock), peak


@pytest.mark.points(2, exercise="5.2")
@pytest.mark.parametrize("p,m", [(4, 8), (2, 2), (3, 7), (4, 4)])
def test_1f1b_order_is_valid_and_fills_the_pipeline(exercise, p, m):
    orders = [[tuple(t) for t in exercise.one_f_one_b_order(p, m, r)] for r in range(p)]
    for order in orders:
        assert sorted(order) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
        for i in range(m):
            assert order.index(("F", i)) < order.index(("B", i))
    makespan, _ = run_orders(orders)
    assert makespan == pytest.approx((m + p - 1) * 3.0), "1F1B's step is (m + p - 1)(t_f + t_b)"


@pytest.mark.points(2, exercise="5.2")
@pytest.mark.parametrize("p,m", [(4, 8), (8, 16), (4, 2)])
def test_1f1b_order_bounds_memory(exercise, p, m):
    """Warm-up of min(p - r - 1, m) forwards, then alternation: at most p - r micro-batches in flight."""
    orders = [[tuple(t) for t in exercise.one_f_one_b_order(p, m, r)] for r in range(p)]
    _, peak = run_orders(orders)
    for r, order in enumerate(orders):
        assert peak[r] == min(p - r, m)
        warm = min(p - r - 1, m)
        assert [k for k, _ in order[:warm]] == ["F"] * warm
        steady = order[warm:warm + 2 * (m - warm)]
        assert [k for k, _ in steady] == ["F", "B"] * (m - warm)


# Exercise 5.3: peak_in_flight ----------------------------------------------------------------------------

@pytest.mark.points(2, exercise="5.3")
def test_peak_in_flight(exercise):
    for p, m in [(4, 8), (8, 32), (4, 2), (1, 3)]:
        for r in range(p):
            assert exercise.peak_in_flight("gpipe", p, m, r) == m
            assert exercise.peak_in_flight("1f1b", p, m, r) == min(p - r, m)
    with pytest.raises(ValueError):
        exercise.peak_in_flight("zigzag", 4, 8, 0)


# Exercise 5.4: partition_stages --------------------------------------------------------------------------

def brute_force_best(costs: list, p: int) -> float:
    n, best = len(costs), float("inf")
    for cuts in itertools.combinations(range(1, n), p - 1):
        bounds = (0, *cuts, n)
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.points(3, exercise="5.4")
def test_partition_stages_is_optimal(exercise):
    rng = random.Random(5)
    for _ in range(40):
        n = rng.randint(1, 9)
        p = rng.randint(1, n)
        costs = [rng.choice([1, 2, 3, 5, 8]) * 1.0 for _ in range(n)]
        sizes = list(exercise.partition_stages(costs, p))
        assert len(sizes) == p and all(s >= 1 for s in sizes) and sum(sizes) == n
        bounds = [0]
        for s in sizes:
            bounds.append(bounds[-1] + s)
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        assert worst == pytest.approx(brute_force_best(costs, p)), (costs, p, sizes)


@pytest.mark.points(1, exercise="5.4")
def test_partition_stages_heavy_head(exercise):
    """The last layer carries the output head: an equal split would put 2 + 6 on the last stage."""
    assert list(exercise.partition_stages([2, 2, 2, 6], 2)) == [3, 1]
    with pytest.raises(ValueError):
        exercise.partition_stages([1, 1], 3)


# Exercise 5.5: pipeline_step (3 gloo processes) ----------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_run(impl):
    from workers_pipeline_parallel import pipeline_worker

    from llama_course.core.testing import spawn

    return spawn(pipeline_worker, 3, impl, 5, timeout=90)


@pytest.mark.points(4, exercise="5.5")
def test_pipeline_step_gradients_match_one_process(pipeline_run):
    for rank, r in enumerate(pipeline_run):
        assert not r["error"], f"stage {rank}: {r['error']}"
        assert r["grad_diff"] < 1e-5, f"stage {rank}: gradients differ from one process by {r['grad_diff']}"
    last = pipeline_run[-1]
    assert last["loss"] == pytest.approx(last["expected_loss"], rel=1e-5)
    assert pipeline_run[0]["loss"] == 0.0


@pytest.mark.points(2, exercise="5.5")
def test_pipeline_step_runs_1f1b(pipeline_run):
    p, m = len(pipeline_run), 5
    for r, result in enumerate(pipeline_run):
        assert not result["error"], f"stage {r}: {result['error']}"
        warm = min(p - r - 1, m)
        expected = "F" * warm + "FB" * (m - warm) + "B" * warm
        assert result["events"] == expected, f"rank {r} ran {result['events']}, 1F1B is {expected}"


@pytest.mark.points(2, exercise="5.5")
def test_pipeline_step_messages_on_the_wire(pipeline_run):
    """Recorded: every message is posted through batch_isend_irecv (NCCL's rule; strict mode would have
    failed a deadlock), and each stage sends exactly m activations forward and m gradients back, to its
    neighbours, receiving as many: nothing resent, nothing gathered."""
    p, m = len(pipeline_run), 5
    for r, result in enumerate(pipeline_run):
        assert not result["error"], f"stage {r}: {result['error']}"
        wire, size = result["wire"], result["message_bytes"]
        assert all(op == "batch_isend_irecv" for _, op, *_ in wire["calls"]), \
            f"stage {r}: {sorted({op for _, op, *_ in wire['calls']})}: post every message in batch_isend_irecv"
        sends = sorted((peer, n) for kind, _, _, n, peer in wire["calls"] if kind == "send")
        recvs = sorted((peer, n) for kind, _, _, n, peer in wire["calls"] if kind == "recv")
        expected = sorted([(r + 1, size)] * (m if r < p - 1 else 0) + [(r - 1, size)] * (m if r > 0 else 0))
        assert sends == expected and recvs == expected, \
            f"stage {r}: sent {sends}, received {recvs}; 1F1B moves one activation and one gradient per " \
            f"micro-batch over each link"
        used = {k for k, b in wire["bytes"].items() if b}
        assert used <= {"send", "recv"}, f"stage {r}: {sorted(used)} on the wire"


# Exercise 5.6: zero_bubble_order -------------------------------------------------------------------------

def zero_bubble_orders(exercise, p: int, m: int) -> list:
    return [[tuple(t) for t in exercise.zero_bubble_order(p, m, r)] for r in range(p)]


@pytest.mark.points(2, exercise="5.6")
@pytest.mark.parametrize("p,m", [(4, 8), (4, 4), (3, 7), (5, 7)])
def test_zero_bubble_order_is_valid_and_fills_the_bubble(exercise, p, m):
    """Every F, B and W once, B after its F, W after its B; run with unit F, B and W the step takes
    3m + p - 1, where 1F1B (its backward B + W = 2 units) takes 3(m + p - 1)."""
    orders = zero_bubble_orders(exercise, p, m)
    for r, order in enumerate(orders):
        assert sorted(order) == sorted((k, i) for k in "FBW" for i in range(m)), f"rank {r}: {order}"
        for i in range(m):
            assert order.index(("F", i)) < order.index(("B", i)) < order.index(("W", i)), f"rank {r}: {order}"
    makespan, _ = run_orders(orders, t_f=1.0, t_b=1.0, t_w=1.0)
    assert makespan == pytest.approx(3 * m + p - 1), \
        f"zero bubble's step is 3m + p - 1 = {3 * m + p - 1} with unit F, B, W; these orders take {makespan:g}"


@pytest.mark.points(1, exercise="5.6")
@pytest.mark.parametrize("p,m", [(4, 8), (8, 16), (3, 5)])
def test_zero_bubble_order_holds_at_most_p_in_flight(exercise, p, m):
    """A micro-batch's activations are held until its W: every rank peaks at exactly p (1F1B's rank 0)."""
    _, peak = run_orders(zero_bubble_orders(exercise, p, m), t_f=1.0, t_b=1.0, t_w=1.0)
    assert peak == [p] * p, f"peak in flight per rank {peak}, zero bubble holds p = {p} on every rank"


@pytest.mark.points(3, exercise="5.6")
def test_zero_bubble_order_matches_the_simulator(exercise):
    """The ZB-H1 order of simulator/pipeline_parallel.py (the runtime's, and torch's), task for task."""
    from simulator.pipeline_parallel import schedule_order

    for p in range(1, 7):
        for m in range(1, 11):
            for r in range(p):
                expected = [(kind, i) for kind, i, _ in schedule_order("zero_bubble", p, m, 1, r)]
                got = [tuple(t) for t in exercise.zero_bubble_order(p, m, r)]
                assert got == expected, f"p={p}, m={m}, rank {r}: got {got}, ZB-H1 runs {expected}"
