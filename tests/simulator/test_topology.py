import pytest

from simulator.hardware import gpu_preset
from simulator.topology import Cluster


def test_paths_within_and_between_nodes():
    hw = gpu_preset("a100-80gb")
    cl = Cluster(hw, 64)
    assert len(cl.path(0, 5)) == 2                                # gpu -> nvswitch -> gpu
    assert cl.path_latency(0, 5) == pytest.approx(hw.intra_latency)
    assert cl.bottleneck(0, 5) == pytest.approx(hw.intra_bandwidth * hw.link_efficiency)
    assert cl.path_latency(0, 8) == pytest.approx(hw.inter_latency)
    assert cl.bottleneck(0, 8) == pytest.approx(hw.inter_bandwidth * hw.nic_efficiency)
    assert cl.path(3, 3) == ()
    # every hop of a path is an edge of the networkx graph
    for u, v in cl.path(0, 63):
        assert cl.graph.has_edge(u, v)


def test_rail_optimized_crosses_the_spine_between_rails():
    hw = gpu_preset("h100-sxm").with_overrides(topology="rail_optimized")
    cl = Cluster(hw, 32)
    same_rail = [u for u, _ in cl.path(0, 8)]
    cross_rail = [u for u, _ in cl.path(0, 9)]
    assert ("spine",) not in same_rail and ("spine",) in cross_rail


def test_only_touched_nodes_are_built():
    cl = Cluster(gpu_preset("h100-sxm"), 16384)
    cl.add_ranks([0, 8, 16])
    gpus = [n for n, d in cl.graph.nodes(data=True) if d.get("kind") == "gpu"]
    assert len(gpus) == 24                                        # three nodes of 8, not 16,384 GPUs
