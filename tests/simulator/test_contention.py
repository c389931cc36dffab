"""Contention against closed forms: shared links split, oversubscribed uplinks halve, rails stay off the spine,
and communication in flight slows the compute beside it by COMM_SM_SHARE."""

import pytest
import simpy

import simulator.contention as contention
from simulator.collectives import CommModel, run_collective
from simulator.contention import Activity, LinkShare, Stream
from simulator.hardware import gpu_preset
from simulator.network import transfer_time
from simulator.topology import Cluster
from simulator.traffic import SymmetricCopies, link_class, traffic


def _run(share, acts):
    """Start every activity at time 0; {index: end time}."""
    env, ends = share.env, {}

    def go(i, act):
        yield share.run(act)
        ends[i] = env.now

    for i, act in enumerate(acts):
        env.process(go(i, act))
    env.run()
    return ends


def test_two_flows_on_one_link_take_twice_as_long():
    env = simpy.Environment()
    share = LinkShare(env, {"nic": 25e9, "other": 25e9}, sm_share=0.0)
    ends = _run(share, [Activity(1.0, [0], {"nic": 1}, 25e9), Activity(1.0, [1], {"nic": 1}, 25e9),
                        Activity(1.0, [2], {"other": 1}, 25e9)])
    assert ends[0] == pytest.approx(2.0) and ends[1] == pytest.approx(2.0)
    assert ends[2] == pytest.approx(1.0)                        # on its own link: its alone time


def test_a_short_activity_leaves_and_the_long_one_speeds_up():
    env = simpy.Environment()
    share = LinkShare(env, {"nic": 10.0}, sm_share=0.0)
    ends = _run(share, [Activity(1.0, [0], {"nic": 1}, 10.0), Activity(3.0, [0], {"nic": 1}, 10.0)])
    # both at half speed until the short one has done its 1 s of work (t = 2), then the long one alone: 2 s more
    assert ends[0] == pytest.approx(2.0) and ends[1] == pytest.approx(4.0)


def test_a_flow_limited_elsewhere_leaves_the_rest_of_the_link():
    """Max-min per flow: a flow that moves at most 5 of the link's 10 keeps its 5 (its alone time); the other
    gets the other 5, half its speed, until the first ends at 1 s, then all 10: 0.5 s more."""
    env = simpy.Environment()
    share = LinkShare(env, {"nic": 10.0, "slow": 5.0}, sm_share=0.0)
    ends = _run(share, [Activity(1.0, [0], {"nic": 1, "slow": 1}, 5.0), Activity(1.0, [1], {"nic": 1}, 10.0)])
    assert ends[0] == pytest.approx(1.0) and ends[1] == pytest.approx(1.5)


def test_communication_in_flight_slows_compute_by_the_sm_share():
    env = simpy.Environment()
    s = contention.COMM_SM_SHARE
    share = LinkShare(env, {"nic": 1.0})
    # 2 s of compute, 70% of it matmuls; 1 s of communication beside it on the same GPU, then alone
    ends = _run(share, [Activity(2.0, [0], compute_share=0.7), Activity(1.0, [0], {"nic": 1}, 1.0)])
    rate = 1 / (0.7 / (1 - s) + 0.3)
    assert ends[1] == pytest.approx(1.0)
    assert ends[0] == pytest.approx(1.0 + (2.0 - rate))
    other = _run(LinkShare(simpy.Environment(), {"nic": 1.0}),
                 [Activity(2.0, [0]), Activity(1.0, [1], {"nic": 1}, 1.0)])
    assert other[0] == pytest.approx(2.0)                      # communication on another GPU: no slowdown


def test_a_pipeline_send_holds_no_sms():
    """A send/recv runs on NCCL_NCHANNELS_PER_NET_PEER = 2 channels (two thread blocks): the compute beside it
    keeps its speed (holds_sms=False), where a collective on the same GPU slows it."""
    send = _run(LinkShare(simpy.Environment(), {"nic": 1.0}, sm_share=0.5),
                [Activity(2.0, [0]), Activity(1.0, [0], {"nic": 1}, 1.0, holds_sms=False)])
    collective = _run(LinkShare(simpy.Environment(), {"nic": 1.0}, sm_share=0.5),
                      [Activity(2.0, [0]), Activity(1.0, [0], {"nic": 1}, 1.0)])
    assert send[0] == pytest.approx(2.0)
    assert collective[0] == pytest.approx(1.0 + (2.0 - 0.5))      # half speed for 1 s, then alone


def test_a_stream_is_one_activity_whose_work_grows():
    env = simpy.Environment()
    share = LinkShare(env, {"nic": 1.0}, sm_share=0.0)
    stream = Stream(share, [0], 1.0, {"nic": 1})
    done = []

    def feed():
        stream.push(1.0, done.append)
        yield env.timeout(0.5)
        stream.push(1.0, done.append)           # queued behind the first
        yield env.timeout(2.0)
        stream.push(1.0, done.append)           # the stream was idle: starts now (t = 2.5)

    env.process(feed())
    env.run()
    assert done == pytest.approx([1.0, 2.0, 3.5])
    assert share.rate_computations == 2         # one per busy period, not one per item


def _fabric(topology="fat_tree", oversubscription=1.0, n=256, **hw):
    return Cluster(gpu_preset("a100-80gb").with_overrides(topology=topology, oversubscription=oversubscription,
                                                          **hw), n)


def test_a_two_to_one_oversubscribed_leaf_halves_cross_leaf_bandwidth():
    """All 128 NICs of leaf 0 (16 nodes x 8) send to leaf 1 at once: at 1:1 each flow has its NIC's rate B,
    at 2:1 the leaf's uplink carries 64 B, so each gets B / 2; one flow alone still gets B."""
    size = 1e9
    flows = [(r, r + 128, size) for r in range(128)]
    full, over = _fabric(), _fabric(oversubscription=2.0)
    b = full.bottleneck(0, 128)
    lat = full.path_latency(0, 128)
    assert transfer_time(full, flows) == pytest.approx(lat + size / b)
    assert transfer_time(over, flows) == pytest.approx(lat + size / (b / 2))
    assert transfer_time(over, flows[:1]) == pytest.approx(lat + size / b)
    assert transfer_time(over, [(r, r + 8, size) for r in range(64)]) == pytest.approx(lat + size / b)  # one leaf


def test_rail_optimized_keeps_same_rail_traffic_off_the_spine():
    """Same switches, 2:1: GPU i of node a to GPU i of node a + 16 crosses the spine in a fat tree (16-node
    leaves) and stays on rail switch i (one NIC of 128 nodes) when rail-optimized, so it keeps full rate."""
    size = 1e9
    flows = [(r, r + 128, size) for r in range(128)]
    fat, rail = _fabric(oversubscription=2.0), _fabric("rail_optimized", oversubscription=2.0)
    assert ("spine",) not in [u for u, _ in rail.path(0, 128)]
    assert ("spine",) in [u for u, _ in fat.path(0, 128)]
    b, lat = rail.bottleneck(0, 128), rail.path_latency(0, 128)
    assert transfer_time(rail, flows) == pytest.approx(lat + size / b)
    assert transfer_time(fat, flows) == pytest.approx(lat + size / (b / 2))
    # between rails (GPU i to GPU j != i) rail-optimized goes through the spine as well
    assert ("spine",) in [u for u, _ in rail.path(0, 129)]


def test_several_dp_groups_share_one_leaf_uplink():
    """One node per leaf, 2:1: the data-parallel ring of TP rank 0 over 4 nodes crosses a leaf uplink (8 NIC
    ports, 4 B) at every hop; alone it runs at B, but the 8 TP ranks' rings cross the same uplinks at once, so
    each flow gets B / 2: t = 2 (n - 1) (alpha + S / (n B / 2))."""
    cl = _fabric(oversubscription=2.0, n=32, nodes_per_leaf=1)
    ranks, size = list(range(0, 32, 8)), 1 << 28
    comm = CommModel(cl)
    copies = SymmetricCopies(cl, ((8, 1),))
    alpha, b = cl.path_latency(0, 8), cl.bottleneck(0, 8)
    alone = run_collective(cl, "all_reduce", ranks, size, "ring")
    assert alone == pytest.approx(2 * 3 * (alpha + size / (4 * b)))
    assert comm.time_with_copies("all_reduce", ranks, size, copies) == pytest.approx(2 * 3 * (alpha + size / (2 * b)))
    one = _fabric(n=32, nodes_per_leaf=1)                        # 1:1: the copies never limit anyone
    assert CommModel(one).time_with_copies("all_reduce", ranks, size, SymmetricCopies(one, ((8, 1),))) == \
        pytest.approx(alone)


def test_traffic_folds_links_into_stage_classes():
    cl = Cluster(gpu_preset("h100-sxm"), 64)
    comm = CommModel(cl)
    t = traffic(comm, "all_reduce", range(0, 64, 8), 1 << 30)
    assert t.seconds == pytest.approx(comm.time("all_reduce", range(0, 64, 8), 1 << 30))
    classes = {link_class(link, lambda r: 0) for link, _ in t.flows}
    assert ("nic_out", 0) in classes and ("nic_in", 0) in classes
    assert t.rate == pytest.approx(cl.bottleneck(0, 8))          # one flow per NIC, at the NIC's rate
