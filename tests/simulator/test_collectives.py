import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simulator.collectives as coll
from simulator.collectives import CommModel, bandwidths, bus_factor, run_collective, tree_stages
from simulator.hardware import NIC_EFFICIENCY, gpu_preset
from simulator.topology import Cluster


def _node(gpu="a100-80gb", n=8):
    return Cluster(gpu_preset(gpu), n)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.floats(1e3, 1e9))
def test_ring_all_reduce_closed_form(n, size):
    cl = _node()
    alpha, b = cl.path_latency(0, 1), cl.bottleneck(0, 1)
    expected = 2 * (n - 1) * (alpha + size / (n * b))
    for exact in (True, False):
        t = run_collective(cl, "all_reduce", range(n), size, "ring", exact=exact)
        assert t == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["reduce_scatter", "all_gather"])
def test_ring_reduce_scatter_all_gather_closed_form(kind):
    cl = _node()
    n, size = 8, 1 << 28
    alpha, b = cl.path_latency(0, 1), cl.bottleneck(0, 1)
    assert run_collective(cl, kind, range(n), size, "ring") == pytest.approx((n - 1) * (alpha + size / (n * b)))


def test_ring_between_nodes_is_limited_by_the_nic():
    cl = Cluster(gpu_preset("a100-80gb"), 64)
    ranks = list(range(0, 64, 8))                   # one GPU per node
    alpha, b = cl.path_latency(0, 8), cl.bottleneck(0, 8)
    t = run_collective(cl, "all_reduce", ranks, 1 << 30, "ring", exact=True)
    assert t == pytest.approx(2 * 7 * (alpha + (1 << 30) / (8 * b)))


@pytest.mark.parametrize("gpu,busbw", [("a100-80gb", 230e9), ("h100-sxm", 370e9)])
def test_busbw_on_one_node_matches_nccl_tests(gpu, busbw):
    cl = _node(gpu)
    size = 1 << 30
    t = CommModel(cl).time("all_reduce", range(8), size)
    _, bus = bandwidths("all_reduce", 8, size, t)
    assert bus == pytest.approx(busbw, rel=0.05)


def test_bus_factors_follow_nccl_tests():
    assert bus_factor("all_reduce", 8) == pytest.approx(2 * 7 / 8)
    assert bus_factor("all_gather", 8) == bus_factor("reduce_scatter", 8) == pytest.approx(7 / 8)
    assert bus_factor("send", 2) == 1.0


def test_rings_across_nodes_use_every_nic_and_tree_wins_small_messages():
    hw = gpu_preset("a100-80gb")
    cl = Cluster(hw, 64)
    big = 1 << 30
    ring = run_collective(cl, "all_reduce", range(64), big, "ring")
    _, bus = bandwidths("all_reduce", 64, big, ring)
    # 8 channels, one per NIC: bounded by 8 x 25 GB/s per node, near nccl-tests' ~190 GB/s on DGX A100
    assert 0.85 * 8 * hw.inter_bandwidth < bus <= 8 * hw.inter_bandwidth * 1.0001
    hier = run_collective(cl, "all_reduce", range(64), big, "hierarchical")
    # hierarchical = reduce-scatter in the node + 8 rail rings at once (one NIC each) + all-gather in the node
    intra = run_collective(cl, "reduce_scatter", range(8), big, "ring")
    rail = run_collective(cl, "all_reduce", list(range(0, 64, 8)), big / 8, "ring")
    assert hier == pytest.approx(2 * intra + rail, rel=1e-6)
    assert ring < hier
    small = 1 << 10
    flat = Cluster(hw, 512)
    ranks = list(range(0, 512, 8))
    assert run_collective(flat, "all_reduce", ranks, small, "tree") < run_collective(flat, "all_reduce", ranks,
                                                                                     small, "ring")


def test_all_to_all_and_send():
    cl = _node()
    alpha, b = cl.path_latency(0, 1), cl.bottleneck(0, 1)
    size = 1 << 26
    assert run_collective(cl, "send", (0, 1), size) == pytest.approx(alpha + size / b)
    # each of the 7 shifted permutations moves size/8 per rank over its own NVLink port
    assert run_collective(cl, "all_to_all", range(8), size) == pytest.approx(7 * (alpha + size / 8 / b))


def test_comm_model_caches():
    comm = CommModel(_node())
    a = comm.time("all_reduce", range(8), 1e6)
    assert comm.time("all_reduce", range(8), 1e6) == a and len(comm._cache) == 1
    assert comm.time("all_reduce", [0], 1e6) == 0.0


def test_nics_run_below_line_rate():
    """InfiniBand does not deliver 100% of its line rate to NCCL (headers, MTU, proxy): the NIC link is
    derated like NVLink is, and the inter-node ring is limited by it."""

    cl = Cluster(gpu_preset("a100-80gb"), 64)
    assert 0.85 <= NIC_EFFICIENCY < 1
    assert cl.bottleneck(0, 8) == pytest.approx(25e9 * NIC_EFFICIENCY)


@pytest.mark.parametrize("gpu", ["a100-80gb", "h100-sxm"])
def test_two_nodes_are_never_faster_than_one(gpu):
    comm = CommModel(Cluster(gpu_preset(gpu), 16))
    for size in (1 << 10, 1 << 20, 1 << 26, 1 << 30):
        one, two = comm.time("all_reduce", range(8), size), comm.time("all_reduce", range(16), size)
        assert two > one, size
        if size >= 1 << 26:
            assert bandwidths("all_reduce", 16, size, two)[1] <= bandwidths("all_reduce", 8, size, one)[1]


def test_double_binary_tree_moves_half_the_bytes_per_tree():
    """NCCL's double binary tree: two trees of S/2, a rank interior in one is a leaf of the other, so each
    pipeline step moves S/k through every NIC (one tree: 2 S/k into an interior rank): about 2x one tree.
    One GPU per node, 8 nodes: t = 2 (D + k - 1) (alpha + S / (k B))."""


    cl = Cluster(gpu_preset("a100-80gb"), 64)
    ranks, size = list(range(0, 64, 8)), 1 << 28
    stages = tree_stages("all_reduce", ranks, size, cl)
    (up, steps), _ = stages
    k = steps - int(math.log2(8)) + 1
    assert len(up) == 2 * 7 and all(b == pytest.approx(size / (2 * k)) for _, _, b in up)
    alpha, b = cl.path_latency(0, 8), cl.bottleneck(0, 8)
    t = run_collective(cl, "all_reduce", ranks, size, "tree", exact=True)
    assert t == pytest.approx(2 * steps * (alpha + size / (k * b)), rel=1e-6)
    single = 2 * steps * (alpha + 2 * size / (k * b))                  # one tree: two children into one NIC
    assert single / t > 1.9


def test_rings_past_the_flow_cap_have_no_cliff(monkeypatch):
    """Every step of a multi-channel ring loads every node alike: timed on the rings of its first nodes past
    MAX_CHANNEL_FLOWS, the step is the same as the whole ring's (no fall back to one NIC per node)."""

    cl = Cluster(gpu_preset("a100-80gb"), 512)
    full = run_collective(cl, "all_reduce", range(512), 1 << 30, "ring")
    monkeypatch.setattr(coll, "MAX_CHANNEL_FLOWS", 8 * 8 * 20)        # 20 of the 64 nodes stand for all
    assert run_collective(cl, "all_reduce", range(512), 1 << 30, "ring") == pytest.approx(full, rel=1e-9)
    monkeypatch.undo()
    big = Cluster(gpu_preset("a100-80gb"), 2048)
    t1k = run_collective(big, "all_reduce", range(1024), 1 << 30, "ring")
    t2k = run_collective(big, "all_reduce", range(2048), 1 << 30, "ring")
    assert t2k < 2 * t1k          # twice the steps' latency at most, not a fall to one NIC per node
