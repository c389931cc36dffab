"""Graded tests for the parameter-server exercises (labs/exercises/parameter_server.py), points per test.

Each test checks against a closed form, a brute force or a direct computation written here, never against
the solution. Exercise 7.5 runs on 3 gloo processes (one launch for the module).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

# Exercise 7.1: server_link_time ----------------------------------------------------------------------------

@pytest.mark.points(2, exercise="7.1")
def test_server_link_time_closed_form(exercise):
    rng = random.Random(7)
    for _ in range(30):
        n, k = rng.choice([1, 2, 4, 8, 64, 512]), rng.choice([1, 2, 8, 64])
        psi, g, e = rng.uniform(1e6, 1e10), rng.choice([2, 4]), rng.choice([2, 4])
        bw, lat = rng.uniform(1e9, 5e10), rng.uniform(1e-6, 1e-4)
        busier = max(n / k, 1)
        expected = 2 * lat + busier * psi * (g + e) / bw
        assert exercise.server_link_time(n, psi, k, g, e, bw, lat) == pytest.approx(expected, rel=1e-9)


@pytest.mark.points(1, exercise="7.1")
def test_server_link_time_loses_to_ring_with_one_server(exercise):
    """One server, 64 workers, 7B parameters in bf16 over 25 GB/s: ~64 (2+2)/(2x2) = 64x a ring's bandwidth."""
    n, psi, bw = 64, 7e9, 25e9
    ps = exercise.server_link_time(n, psi, 1, 2, 2, bw, 0.0)
    ring = 2 * (n - 1) / n * psi * 2 / bw
    assert ps / ring == pytest.approx(n * 4 / (2 * 2) * n / (n - 1), rel=1e-9)
    assert exercise.server_link_time(n, psi, n, 2, 2, bw, 0.0) / ring < 1.02   # k = N servers: ring's bytes


@pytest.mark.points(1, exercise="7.1")
@pytest.mark.parametrize("args", [(0, 1e6, 1, 2, 2, 1e9, 0), (4, 1e6, 0, 2, 2, 1e9, 0), (4, 1e6, 1, 2, 2, 0, 0)])
def test_server_link_time_rejects_bad_input(exercise, args):
    with pytest.raises(ValueError):
        exercise.server_link_time(*args)
    assert exercise.server_link_time(2, 1.0, 1, 1, 1, 0.5, 0.0) == pytest.approx(8.0)    # any positive bandwidth


# Exercise 7.2: shard_keys ----------------------------------------------------------------------------------

def _loads(sizes, owner, k):
    loads = [0] * k
    for s, j in zip(sizes, owner):
        loads[j] += s
    return loads


@pytest.mark.points(2, exercise="7.2")
def test_shard_keys_greedy_example(exercise):
    # largest first: 8->s0, 7->s1, 5->s2, 4->s2 (5 < 7 < 8), 3->s1 (7 < 8 < 9), 1->s0 (8 < 9 = 10 - 1)
    sizes = [3, 8, 1, 5, 7, 4]
    assert exercise.shard_keys(sizes, 3) == [1, 0, 0, 2, 1, 2]


@pytest.mark.points(2, exercise="7.2")
def test_shard_keys_bounds_against_brute_force(exercise):
    rng = random.Random(3)
    for _ in range(25):
        k = rng.choice([2, 3])
        sizes = [rng.randint(1, 100) for _ in range(rng.randint(1, 8))]
        owner = exercise.shard_keys(sizes, k)
        assert len(owner) == len(sizes) and all(0 <= j < k for j in owner)
        worst = max(_loads(sizes, owner, k))
        best = min(max(_loads(sizes, o, k)) for o in itertools.product(range(k), repeat=len(sizes)))
        assert worst <= max(sizes) + sum(sizes) / k
        assert worst <= 4 / 3 * best + 1e-9


@pytest.mark.points(1, exercise="7.2")
def test_shard_keys_llama_tensors(exercise):
    """The embedding bounds the balance: it is alone on its server."""
    d, f, v, layers = 64, 176, 4096, 4
    sizes = [v * d] + [d * d, d * d, d * d, d * d, d * f, f * d, d * f, d, d] * layers + [d, v * d]
    owner = exercise.shard_keys(sizes, 4)
    loads = _loads(sizes, owner, 4)
    assert sum(loads) == sum(sizes) and max(loads) == v * d
    with pytest.raises(ValueError):
        exercise.shard_keys(sizes, 0)
    with pytest.raises(ValueError):
        exercise.shard_keys([3, -1], 2)
    assert exercise.shard_keys([3, 1], 1) == [0, 0]                     # one server owns everything
    assert exercise.shard_keys([0, 5, 0], 2) == [1, 0, 1]               # empty tensors are fine


# Exercise 7.3: aggregate -----------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="7.3")
def test_aggregate_mean_and_sum(exercise):
    grads = [np.array([1.0, 2.0]), np.array([3.0, -2.0]), np.array([2.0, 3.0])]
    copies = [g.copy() for g in grads]
    mean, state = exercise.aggregate(grads, "mean")
    assert np.allclose(mean, [2.0, 1.0]) and state is None
    total, state = exercise.aggregate(grads, "sum")
    assert np.allclose(total, [6.0, 3.0]) and state is None
    assert all(np.array_equal(a, b) for a, b in zip(grads, copies)), "the inputs were modified"


@pytest.mark.points(2, exercise="7.3")
def test_aggregate_ema_is_a_low_pass_filter(exercise):
    torch = pytest.importorskip("torch")
    b = 0.75
    u, state = exercise.aggregate([torch.tensor([4.0]), torch.tensor([0.0])], "ema", None, b)
    assert float(u) == pytest.approx(2.0) and float(state) == pytest.approx(2.0)
    expected = 2.0
    for m in [6.0, -2.0, 10.0]:                                     # u <- b u + (1 - b) mean
        u, state = exercise.aggregate([torch.tensor([m])], "ema", state, b)
        expected = b * expected + (1 - b) * m
        assert float(u) == pytest.approx(expected)
    # a constant gradient is passed through unchanged once the filter has seen it
    u, s = exercise.aggregate([np.ones(3)], "ema", np.ones(3), 0.9)
    assert np.allclose(u, 1.0)


@pytest.mark.points(1, exercise="7.3")
def test_aggregate_rejects_bad_input(exercise):
    with pytest.raises(ValueError):
        exercise.aggregate([np.ones(2)], "median")
    with pytest.raises(ValueError):
        exercise.aggregate([], "mean")


# Exercise 7.4: hogwild_apply -------------------------------------------------------------------------------

@pytest.mark.points(1, exercise="7.4")
def test_hogwild_locked_schedule_loses_nothing(exercise):
    schedule = [("read", 0), ("write", 0), ("read", 1), ("write", 1), ("read", 2), ("write", 2)]
    assert exercise.hogwild_apply(10.0, [1.0, 2.0, 4.0], schedule) == pytest.approx(17.0)


@pytest.mark.points(2, exercise="7.4")
def test_hogwild_interleaved_loses_updates(exercise):
    d = [1.0, 2.0, 4.0]
    # r0 r1 w0 w1: worker 1 read before worker 0 wrote, so its write erases delta 0
    assert exercise.hogwild_apply(10.0, d[:2], [("read", 0), ("read", 1), ("write", 0), ("write", 1)]) == 12.0
    # r0 r1 r2 w2 w1 w0: only the last write (worker 0's) survives
    sched = [("read", 0), ("read", 1), ("read", 2), ("write", 2), ("write", 1), ("write", 0)]
    assert exercise.hogwild_apply(10.0, d, sched) == 11.0
    # r0 w0 r1 r2 w1 w2: delta 1 lost, delta 0 and 2 kept
    sched = [("read", 0), ("write", 0), ("read", 1), ("read", 2), ("write", 1), ("write", 2)]
    assert exercise.hogwild_apply(0.0, d, sched) == 5.0
    with pytest.raises(ValueError):
        exercise.hogwild_apply(0.0, d, [("write", 0), ("read", 0)])
    with pytest.raises(ValueError):
        exercise.hogwild_apply(0.0, d, [("read", 0), ("peek", 0), ("write", 0)])


# Exercise 7.5: ps_sgd_round on 3 gloo processes -------------------------------------------------------------

@pytest.fixture(scope="module")
def ps_results(exercise):
    """One launch of 3 gloo ranks (server 0, workers 1 and 2) runs four rounds."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workers_parameter_server as workers

    from llama_course.core.testing import spawn

    return spawn(workers.check_ps_sgd_round, 3, exercise.__name__, timeout=90)


@pytest.mark.points(3, exercise="7.5")
def test_ps_sgd_round_matches_sgd_on_the_mean_gradient(ps_results):
    for rank, out in enumerate(ps_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert len(out["weights"]) == 4
        for step, (w, ref) in enumerate(zip(out["weights"], out["reference"])):
            err = float((w - ref).abs().max())
            assert err < 1e-12, f"rank {rank}, round {step}: max error {err} against SGD on the workers' mean"


@pytest.mark.points(2, exercise="7.5")
def test_ps_sgd_round_pushes_and_pulls_on_the_wire(ps_results):
    """Recorded per round: each worker sends one gradient to the server and receives one copy of the
    weights from it; the server receives N - 1 gradients and sends N - 1 copies. Nothing else travels."""
    n, nbytes = len(ps_results), 3 * 5 * 8
    for rank, out in enumerate(ps_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        want = (n - 1) * nbytes if rank == 0 else nbytes
        for step, wire in enumerate(out["wire"]):
            got = {k: v for k, v in wire["bytes"].items() if v}
            assert got == {"send": want, "recv": want}, f"rank {rank}, round {step}: {got}, expected {want} each way"
            assert all(op == "batch_isend_irecv" for _, op, *_ in wire["calls"]), \
                f"rank {rank}, round {step}: {[op for _, op, *_ in wire['calls']]}: post messages in batches"
            peers = {peer for kind, _, _, _, peer in wire["calls"] if peer is not None}
            assert rank == 0 or peers <= {0}, f"worker {rank} talked to {sorted(peers)}: workers talk to the server only"


@pytest.mark.points(1, exercise="7.5")
def test_ps_sgd_round_every_rank_holds_the_same_weights(ps_results):
    for out in ps_results:
        assert not out["error"], out["error"]
    for step in range(4):
        first = ps_results[0]["weights"][step]
        assert all(bool((out["weights"][step] == first).all()) for out in ps_results)


@pytest.mark.points(1, exercise="7.5")
def test_ps_sgd_round_on_a_group(exercise):
    """Server = group rank 1 of the group {0, 2}, i.e. global rank 2; global rank 0 is the only worker."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workers_parameter_server as workers

    from llama_course.core.testing import spawn

    results = spawn(workers.check_ps_on_a_group, 3, exercise.__name__, timeout=90)
    want = torch.full((4,), 2.0, dtype=torch.float64) - 0.5 * torch.arange(4, dtype=torch.float64)
    for rank in (0, 2):
        assert not results[rank]["error"], f"rank {rank}: {results[rank]['error']}"
        assert torch.allclose(results[rank]["weights"], want), f"rank {rank}: {results[rank]['weights']}"
