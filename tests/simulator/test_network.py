import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.hardware import gpu_preset
from simulator.network import Flow, max_min_rates, transfer_time
from simulator.topology import Cluster


def _cluster(n=32):
    return Cluster(gpu_preset("a100-80gb"), n)


def test_one_flow_is_alpha_plus_size_over_bandwidth():
    cl = _cluster()
    size = 1e8
    t = transfer_time(cl, [(0, 8, size)])
    assert abs(t - (cl.path_latency(0, 8) + size / cl.bottleneck(0, 8))) < 1e-9


def test_flows_sharing_a_link_split_it():
    cl = _cluster()
    one = transfer_time(cl, [(0, 8, 1e8)]) - cl.path_latency(0, 8)
    two = transfer_time(cl, [(0, 8, 1e8), (0, 16, 1e8)]) - cl.path_latency(0, 8)   # both leave by nic 0
    assert abs(two - 2 * one) / one < 1e-6
    disjoint = transfer_time(cl, [(0, 8, 1e8), (1, 9, 1e8)]) - cl.path_latency(0, 8)
    assert abs(disjoint - one) / one < 1e-6


def test_a_short_flow_leaves_and_the_long_one_speeds_up():
    cl = _cluster()
    b = cl.bottleneck(0, 8)
    t = transfer_time(cl, [(0, 8, 1e8), (0, 16, 3e8)]) - cl.path_latency(0, 8)
    # 2e8 bytes at b/2 each, then the remaining 2e8 at b: (2e8 + 2e8) / b
    assert abs(t - 4e8 / b) / t < 1e-6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 31)), min_size=1, max_size=12))
def test_max_min_rates_are_feasible_and_bottlenecked(pairs):
    cl = _cluster()
    env = simpy.Environment()
    flows = [Flow(cl.path(s, d), 1.0, env.event()) for s, d in pairs if s != d]
    if not flows:
        return
    max_min_rates(flows, cl.capacity)
    load = {}
    for f in flows:
        for link in f.links:
            load[link] = load.get(link, 0.0) + f.rate
    for link, used in load.items():
        assert used <= cl.capacity[link] * (1 + 1e-9)
    for f in flows:     # every flow crosses a saturated link on which no flow gets more than it does
        assert any(load[link] >= cl.capacity[link] * (1 - 1e-9)
                   and all(g.rate <= f.rate * (1 + 1e-9) for g in flows if link in g.links)
                   for link in f.links)


def test_flows_starting_together_share_one_rate_computation():
    from simulator.network import Network

    cl = Cluster(gpu_preset("a100-80gb"), 512)
    env = simpy.Environment()
    net = Network(env, cl)
    ranks = list(range(0, 512, 8))
    procs = [net.transfer(ranks[i], ranks[(i + 1) % len(ranks)], 1e6) for i in range(len(ranks))]
    env.run(env.all_of(procs))
    assert net.rate_computations <= 2          # one when they start, none needed when they all end together
