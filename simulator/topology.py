"""Topology: the cluster as a networkx graph of GPUs, switches and NICs, with bandwidth and latency per link.

    node n:   gpu(8n+i) <-> nvswitch(n)            NVLink, intra_bandwidth x link_efficiency per direction
              gpu(8n+i) <-> nic(8n+i)              PCIe to the GPU's own NIC (one NIC per GPU, as DGX)
    fabric:   nic <-> leaf switch                  inter_bandwidth x nic_efficiency, inter_latency
              leaf <-> spine                       non-blocking: the leaf's total NIC bandwidth
    fat_tree:       a leaf serves `nodes_per_leaf` whole nodes (all 8 NICs of a node on one leaf)
    rail_optimized: a rail switch serves NIC i of every node of the group (rail i); crossing rails goes
                    through the spine

Edges are directed (full duplex: each direction has its own capacity). A message's path is
GPU -> NVSwitch -> GPU within a node, GPU -> NIC -> switch(es) -> NIC -> GPU between nodes, and its
latency is the sum of the latencies on the path (intra_latency within a node, inter_latency between).

Only the nodes that the simulated groups touch are built (`Cluster.add_ranks`): the rest of a 16,384-GPU
cluster is symmetric to them, so building it would cost time and change nothing.

    python -c "from simulator.topology import demo; demo()"
"""

from __future__ import annotations

import networkx as nx

from simulator.hardware import Hardware


class Cluster:
    """A cluster of `num_gpus` devices of one Hardware type, built lazily node by node."""

    def __init__(self, hw: Hardware, num_gpus: int):
        self.hw = hw
        self.num_gpus = num_gpus
        self.gpus_per_node = max(1, min(hw.gpus_per_node, num_gpus))
        self.num_nodes = -(-num_gpus // self.gpus_per_node)
        self.topology = hw.topology or "fat_tree"
        self.graph = nx.DiGraph()
        self.capacity: dict = {}   # (u, v) -> bytes/s, mirrors the graph for fast lookup
        self.latency: dict = {}    # (u, v) -> seconds
        self._nodes: set = set()
        self._paths: dict = {}
        self.graph.add_node(("spine",), kind="switch")

    # ---- construction --------------------------------------------------------------------------
    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def local_of(self, rank: int) -> int:
        return rank % self.gpus_per_node

    def add_ranks(self, ranks) -> None:
        """Build the nodes holding these ranks (and the switches above them)."""
        for r in ranks:
            if not 0 <= r < self.num_gpus:
                raise ValueError(f"rank {r} outside the cluster of {self.num_gpus}")
            n = self.node_of(r)
            if n not in self._nodes:
                self._add_node(n)

    def _link(self, u, v, bandwidth: float, latency: float = 0.0) -> None:
        for a, b in ((u, v), (v, u)):
            self.graph.add_edge(a, b, bandwidth=bandwidth, latency=latency)
            self.capacity[(a, b)] = bandwidth
            self.latency[(a, b)] = latency

    def _switch_of(self, rank: int):
        group = self.node_of(rank) // self.hw.nodes_per_leaf
        if self.topology == "rail_optimized":
            return ("rail", group, self.local_of(rank))
        return ("leaf", group)

    def _add_node(self, n: int) -> None:
        hw, g = self.hw, self.gpus_per_node
        self._nodes.add(n)
        nvs = ("nvswitch", n)
        nvlink = hw.intra_bandwidth * hw.link_efficiency
        leaf_up = hw.nodes_per_leaf * (g if self.topology == "fat_tree" else 1) * hw.inter_bandwidth
        for i in range(g):
            r = n * g + i
            if r >= self.num_gpus:
                break
            gpu, nic = ("gpu", r), ("nic", r)
            self.graph.add_node(gpu, kind="gpu", node=n)
            self._link(gpu, nvs, nvlink, hw.intra_latency / 2)
            if self.num_nodes > 1:
                sw = self._switch_of(r)
                self._link(gpu, nic, max(hw.inter_bandwidth, 32e9))      # PCIe Gen4 x16 or better
                self._link(nic, sw, hw.inter_bandwidth * hw.nic_efficiency, hw.inter_latency / 2)
                if not self.graph.has_edge(sw, ("spine",)):
                    self._link(sw, ("spine",), leaf_up)

    # ---- routing -------------------------------------------------------------------------------
    def path(self, src: int, dst: int) -> tuple:
        """The directed links a message from GPU `src` to GPU `dst` crosses, in order."""
        key = (src, dst)
        p = self._paths.get(key)
        if p is not None:
            return p
        self.add_ranks((src, dst))
        a, b = ("gpu", src), ("gpu", dst)
        if src == dst:
            p = ()
        elif self.node_of(src) == self.node_of(dst):
            nvs = ("nvswitch", self.node_of(src))
            p = ((a, nvs), (nvs, b))
        else:
            na, nb = ("nic", src), ("nic", dst)
            sa, sb = self._switch_of(src), self._switch_of(dst)
            mid = ((sa, sb),) if sa == sb else ((sa, ("spine",)), (("spine",), sb))
            mid = tuple(e for e in mid if e[0] != e[1])
            p = ((a, na), (na, sa)) + mid + ((sb, nb), (nb, b))
        self._paths[key] = p
        return p

    def path_latency(self, src: int, dst: int) -> float:
        return sum(self.latency[e] for e in self.path(src, dst))

    def bottleneck(self, src: int, dst: int) -> float:
        """Smallest link capacity on the path (bytes/s); inf for a rank to itself."""
        p = self.path(src, dst)
        return min((self.capacity[e] for e in p), default=float("inf"))


def demo() -> None:
    from simulator.hardware import gpu_preset

    cl = Cluster(gpu_preset("a100-80gb"), 32)
    cl.add_ranks(range(32))
    print(f"{cl.graph.number_of_nodes()} vertices, {cl.graph.number_of_edges()} directed links")
    for src, dst in ((0, 1), (0, 8), (0, 31)):
        hops = " -> ".join(str(u) for u, _ in cl.path(src, dst)) + f" -> {cl.path(src, dst)[-1][1]}"
        print(f"{src} -> {dst}: {hops}; latency {cl.path_latency(src, dst) * 1e6:.1f} us, "
              f"bottleneck {cl.bottleneck(src, dst) / 1e9:.0f} GB/s")
