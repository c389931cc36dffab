"""Graded tests for the collectives exercises (labs/exercises/collectives.py), points per test case.

Each test checks against a closed form or a direct computation written here, never against the solution.
"""

from __future__ import annotations

import math
import random

import pytest

OPS_RING = ["all_reduce", "reduce_scatter", "all_gather", "all_to_all"]


# Exercise 2.1: ring_all_reduce_bytes --------------------------------------------------------------------

@pytest.mark.points(2, exercise="2.1")
@pytest.mark.parametrize("size,n,expected", [(100.0, 4, 150.0), (1e9, 2, 1e9), (14e9, 8, 24.5e9)])
def test_ring_all_reduce_bytes(exercise, size, n, expected):
    assert exercise.ring_all_reduce_bytes(size, n) == pytest.approx(expected)


@pytest.mark.points(1, exercise="2.1")
def test_ring_all_reduce_bytes_limits(exercise):
    assert exercise.ring_all_reduce_bytes(1e6, 1) == 0
    # approaches 2 x size, and never exceeds it, as n grows: bandwidth-optimal
    sizes = [exercise.ring_all_reduce_bytes(1e6, n) for n in (2, 8, 64, 1024)]
    assert sizes == sorted(sizes) and sizes[-1] < 2e6 and sizes[-1] > 1.99e6


@pytest.mark.points(1, exercise="2.1")
@pytest.mark.parametrize("size,n", [(100, 0), (-1, 4)])
def test_ring_all_reduce_bytes_rejects_bad_input(exercise, size, n):
    with pytest.raises(ValueError):
        exercise.ring_all_reduce_bytes(size, n)


# Exercise 2.2: alpha_beta_time --------------------------------------------------------------------------

def _steps(op: str, n: int) -> int:
    return 2 * (n - 1) if op == "all_reduce" else n - 1


@pytest.mark.points(3, exercise="2.2")
@pytest.mark.parametrize("op", OPS_RING)
def test_alpha_beta_ring_collectives(exercise, op):
    rng = random.Random(op)
    for _ in range(20):
        n = rng.choice([2, 3, 4, 8, 16, 64])
        size, alpha, bw = rng.uniform(1e3, 1e9), rng.uniform(1e-6, 2e-5), rng.uniform(1e9, 4e11)
        expected = _steps(op, n) * alpha + _steps(op, n) * size / n / bw
        assert exercise.alpha_beta_time(op, size, n, alpha, bw) == pytest.approx(expected, rel=1e-9)


@pytest.mark.points(1, exercise="2.2")
def test_alpha_beta_send_recv(exercise):
    assert exercise.alpha_beta_time("send_recv", 1e6, 2, 5e-6, 1e9) == pytest.approx(5e-6 + 1e-3)


@pytest.mark.points(1, exercise="2.2")
def test_alpha_beta_regimes(exercise):
    """Tiny messages cost latency x steps; huge ones approach 2(n-1)/n x S / B."""
    n, alpha, bw = 8, 1e-5, 1e10
    tiny = exercise.alpha_beta_time("all_reduce", 1, n, alpha, bw)
    assert tiny == pytest.approx(2 * (n - 1) * alpha, rel=1e-3)
    huge = exercise.alpha_beta_time("all_reduce", 1e12, n, alpha, bw)
    assert huge == pytest.approx(2 * (n - 1) / n * 1e12 / bw, rel=1e-6)


@pytest.mark.points(1, exercise="2.2")
def test_alpha_beta_unknown_op(exercise):
    with pytest.raises(ValueError):
        exercise.alpha_beta_time("all_scream", 1e6, 4, 1e-6, 1e9)


@pytest.mark.points(1, exercise="2.2")
@pytest.mark.parametrize("op", OPS_RING)
def test_alpha_beta_group_sizes(exercise, op):
    """A group of one has nothing to exchange: 0 steps, 0 s. No group has fewer than one rank."""
    assert exercise.alpha_beta_time(op, 1e6, 1, 1e-6, 1e9) == 0
    for n in (0, -1):
        with pytest.raises(ValueError):
            exercise.alpha_beta_time(op, 1e6, n, 1e-6, 1e9)


# Exercise 2.3: bus_bandwidth ----------------------------------------------------------------------------

BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "reduce_scatter": lambda n: (n - 1) / n,
              "all_gather": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n,
              "broadcast": lambda n: 1.0, "send_recv": lambda n: 1.0}


@pytest.mark.points(2, exercise="2.3")
@pytest.mark.parametrize("op", sorted(BUS_FACTOR))
def test_bus_bandwidth_factors(exercise, op):
    for n in (2, 4, 8, 256):
        got = exercise.bus_bandwidth(op, 4e9, 0.5, n)
        assert got == pytest.approx(8e9 * BUS_FACTOR[op](n))


@pytest.mark.points(1, exercise="2.3")
def test_bus_bandwidth_recovers_the_link(exercise):
    """Feed the alpha-beta time of a large ring collective back in: busbw is the link bandwidth, for any n."""
    bw = 2.5e10
    for n in (2, 8, 64):
        for op in OPS_RING:
            t = _steps(op, n) * 1e9 / n / bw          # no latency
            assert exercise.bus_bandwidth(op, 1e9, t, n) == pytest.approx(bw)


@pytest.mark.points(1, exercise="2.3")
def test_bus_bandwidth_unknown_op(exercise):
    with pytest.raises(ValueError):
        exercise.bus_bandwidth("gossip", 1e6, 1.0, 4)


# Exercise 2.4: hierarchical_all_reduce_bytes ------------------------------------------------------------

@pytest.mark.points(2, exercise="2.4")
@pytest.mark.parametrize("nodes,g", [(2, 8), (4, 4), (16, 8), (1, 8), (8, 1)])
def test_hierarchical_all_reduce_bytes(exercise, nodes, g):
    size = 1.6e9
    intra, inter = exercise.hierarchical_all_reduce_bytes(size, nodes, g)
    # reduce-scatter + all-gather over g GPUs; all-reduce of one S/g shard over `nodes` ranks
    assert intra == pytest.approx((g - 1) * size / g * 2)
    assert inter == pytest.approx((nodes - 1) * (size / g) / nodes * 2)


@pytest.mark.points(1, exercise="2.4")
def test_hierarchical_cuts_inter_node_bytes_by_gpus_per_node(exercise):
    """Against a flat ring over all nodes x g GPUs, the per-GPU inter-node bytes shrink by about g."""
    nodes, g, size = 32, 8, 1e9
    _, inter = exercise.hierarchical_all_reduce_bytes(size, nodes, g)
    flat = 2 * (nodes * g - 1) / (nodes * g) * size
    assert flat / inter == pytest.approx(g * (nodes * g - 1) / (nodes * g) * nodes / (nodes - 1))
    assert 7.5 < flat / inter < 8.5


@pytest.mark.points(1, exercise="2.4")
@pytest.mark.parametrize("args", [(1e6, 0, 8), (1e6, 2, 0), (-1, 2, 8)])
def test_hierarchical_rejects_bad_input(exercise, args):
    with pytest.raises(ValueError):
        exercise.hierarchical_all_reduce_bytes(*args)


# Exercise 2.5: ring_all_reduce --------------------------------------------------------------------------

def _buffers(n: int, length: int, seed: int) -> list:
    rng = random.Random(seed)
    return [[rng.randint(-1000, 1000) for _ in range(length)] for _ in range(n)]


@pytest.mark.points(3, exercise="2.5")
@pytest.mark.parametrize("n,length", [(2, 6), (3, 9), (4, 10), (5, 3), (7, 21)])
def test_ring_all_reduce_sums(exercise, n, length):
    buffers = _buffers(n, length, seed=n * 100 + length)
    copies = [list(b) for b in buffers]
    results, _ = exercise.ring_all_reduce(buffers)
    expected = [sum(col) for col in zip(*buffers)]
    assert all(list(r) == expected for r in results)
    assert buffers == copies, "the inputs were modified"


@pytest.mark.points(2, exercise="2.5")
@pytest.mark.parametrize("n,length", [(2, 4), (4, 8), (5, 12)])
def test_ring_all_reduce_messages_follow_the_ring(exercise, n, length):
    _, messages = exercise.ring_all_reduce(_buffers(n, length, seed=1))
    steps = sorted({m[0] for m in messages})
    assert steps == list(range(2 * (n - 1)))
    for step in steps:
        sent = [m for m in messages if m[0] == step]
        assert sorted(m[1] for m in sent) == list(range(n)), "each rank sends once per step"
        assert all(dst == (src + 1) % n for _, src, dst, _ in sent), "only to the right neighbour"
        assert sorted(m[3] for m in sent) == list(range(n)), "each chunk moves once per step"
    # bytes per rank: 2(n-1) chunks of length/n, the ring all-reduce cost of exercise 2.1
    chunk = [len(c) for c in _split(list(range(length)), n)]
    sent_by_rank = [sum(chunk[m[3]] for m in messages if m[1] == r) for r in range(n)]
    if length % n == 0:
        assert all(s == 2 * (n - 1) * length // n for s in sent_by_rank)
    assert sum(sent_by_rank) == 2 * (n - 1) * length


@pytest.mark.points(1, exercise="2.5")
def test_ring_all_reduce_sums_only_through_messages(exercise):
    """Replaying the recorded messages on the inputs must give the results: the sums came through the ring."""
    n, length = 4, 8
    buffers = _buffers(n, length, seed=7)
    results, messages = exercise.ring_all_reduce(buffers)
    data = [list(b) for b in buffers]
    bounds = _bounds(length, n)
    for step in range(2 * (n - 1)):
        sent = [m for m in messages if m[0] == step]
        payloads = [data[src][slice(*bounds[c])] for _, src, _, c in sent]
        for (_, _, dst, c), payload in zip(sent, payloads):
            lo, hi = bounds[c]
            if step < n - 1:
                data[dst][lo:hi] = [a + b for a, b in zip(data[dst][lo:hi], payload)]
            else:
                data[dst][lo:hi] = payload
    assert data == [list(r) for r in results]
    assert math.isclose(sum(map(sum, results)), n * sum(map(sum, buffers)))


def _bounds(length: int, n: int) -> list:
    out, lo = [], 0
    for c in range(n):
        hi = lo + length // n + (1 if c < length % n else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _split(xs: list, n: int) -> list:
    return [xs[lo:hi] for lo, hi in _bounds(len(xs), n)]


# Exercise 2.6: ring_all_reduce_p2p on gloo processes -----------------------------------------------------

@pytest.fixture(scope="module")
def p2p_results(exercise):
    """One launch of 3 gloo ranks runs every case; each test below reads its part."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_collectives as workers

    from llama_course.core.testing import spawn

    return spawn(workers.check_ring_all_reduce_p2p, 3, exercise.__name__, timeout=90)


@pytest.mark.points(4, exercise="2.6")
def test_ring_all_reduce_p2p_matches_torch(p2p_results):
    for rank, rows in enumerate(p2p_results):
        assert rows and not rows[-1][3], f"rank {rank}: {rows[-1][3] if rows else 'no result'}"
        assert len(rows) == 6
        for numel, err, *_ in rows:
            assert err < 1e-5, f"rank {rank}, {numel} elements: max error {err} against dist.all_reduce"


@pytest.mark.points(2, exercise="2.6")
def test_ring_all_reduce_p2p_sends_ring_bytes(p2p_results):
    n = 3
    for rank, rows in enumerate(p2p_results):
        assert rows and not rows[-1][3], f"rank {rank}: {rows[-1][3] if rows else 'no result'}"
        for numel, _, sent, *_ in rows:
            if numel % n == 0:
                assert sent == 2 * (n - 1) * numel // n, f"rank {rank} sent {sent} of {numel} elements"
    for i, (numel, *_) in enumerate(p2p_results[0]):     # every step moves all n chunks once
        assert sum(rows[i][2] for rows in p2p_results) == 2 * (n - 1) * numel


@pytest.mark.points(2, exercise="2.6")
def test_ring_all_reduce_p2p_wire_is_a_ring(p2p_results):
    """What crossed the wire (recorded, not self-reported): only send/recv, each rank sending to its right
    neighbour and receiving from its left, 2 (n-1)/n of the buffer each way, as many bytes as it reported."""
    n = 3
    for rank, rows in enumerate(p2p_results):
        assert rows and not rows[-1][3], f"rank {rank}: {rows[-1][3] if rows else 'no result'}"
        for numel, _, sent, _, elem, wire in rows:
            used = {kind for kind, b in wire["bytes"].items() if b}
            assert used <= {"send", "recv"}, f"rank {rank}, {numel} elements: {sorted(used)} on the wire, p2p only"
            assert wire["bytes"]["send"] == sent * elem, \
                f"rank {rank}: reported {sent} elements sent, the wire carried {wire['bytes']['send'] // elem}"
            unbatched = {op for kind, op, *_ in wire["calls"] if op != "batch_isend_irecv"}
            assert not unbatched, f"rank {rank}: {sorted(unbatched)} outside batch_isend_irecv"
            peers = {peer for kind, _, _, _, peer in wire["calls"] if kind == "send" and peer is not None}
            assert peers <= {(rank + 1) % n}, f"rank {rank} sent to {sorted(peers)}: only to the right neighbour"
            if numel % n == 0:
                assert wire["bytes"]["send"] == wire["bytes"]["recv"] == 2 * (n - 1) * numel // n * elem, \
                    f"rank {rank}: {wire['bytes']} for {numel} elements; a ring sends and receives 2(n-1)/n of them"
    for i, (numel, *_, elem, _) in enumerate(p2p_results[0]):            # all sends are received, 2(n-1) chunks
        sends = sum(rows[i][5]["bytes"]["send"] for rows in p2p_results)
        recvs = sum(rows[i][5]["bytes"]["recv"] for rows in p2p_results)
        assert sends == recvs == 2 * (n - 1) * numel * elem, f"{numel} elements: {sends} sent, {recvs} received"


@pytest.fixture(scope="module")
def p2p_group_results(exercise):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_collectives as workers

    from llama_course.core.testing import spawn

    return spawn(workers.check_ring_on_groups, 3, exercise.__name__, timeout=90)


@pytest.mark.points(2, exercise="2.6")
def test_ring_all_reduce_p2p_on_process_groups(p2p_group_results):
    """On the group {0, 2} of 3 ranks: the sum of ranks 0 and 2 only, messages between global ranks 0 and 2
    (group rank 1 is global rank 2); on a group of one rank: nothing sent, the tensor unchanged."""
    import torch

    base = torch.arange(10, dtype=torch.float64)
    for rank, out in enumerate(p2p_group_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["single_sent"] == 0 and torch.equal(out["single"], torch.arange(4, dtype=torch.float64) + rank)
        assert not any(out["single_wire"]["bytes"].values()), f"rank {rank}: a one-rank group sends nothing"
        if rank in (0, 2):
            assert torch.equal(out["pair"], base * 4), f"rank {rank}: {out['pair']} is not ranks 0 + 2"
            other = 2 - rank
            peers = {peer for *_, peer in out["pair_wire"]["calls"]}
            assert peers == {other}, f"rank {rank} exchanged with global ranks {sorted(peers)}, not {other}"
            assert out["pair_sent"] == 10                   # 2 (n - 1) / n of 10 elements, n = 2
