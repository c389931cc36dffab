"""Topology: the cluster as a networkx graph of GPUs, switches and NICs, with bandwidth and latency per link.

    node n:   gpu(8n+i) <-> nvswitch(n)            NVLink, intra_bandwidth x link_efficiency per direction
              gpu(8n+i) <-> nic(8n+i)              PCIe to the GPU's own NIC (one NIC per GPU, as DGX)
    fabric:   nic <-> leaf switch                  inter_bandwidth x nic_efficiency, inter_latency
              leaf <-> spine                       the leaf's NIC ports x their rate / oversubscription
    fat_tree:       a leaf serves `nodes_per_leaf` whole nodes (all 8 NICs of a node on one leaf)
    rail_optimized: a rail switch with as many ports serves NIC i of nodes_per_leaf x 8 nodes (rail i of
                    its group); traffic between rails, or between groups, goes through the spine

So with the same switches, GPU i of node a and GPU i of node b (a data-parallel ring, a pipeline send under
Megatron's rank order) meet on one rail switch when a and b are among 128 nodes, but cross the spine in a
fat tree as soon as they sit under different 16-node leaves. The spine is one node: the core is
non-blocking, and `cluster.inter_node.oversubscription` (R) shrinks each leaf's uplink to 1/R of its NIC
ports' bandwidth (2:1 is common). At R = 1 the uplink carries whatever its NICs send, so it never limits a
flow; at R = 2 the 128 NICs of a leaf sending out of it at once get half their rate each.

Edges are directed (full duplex: each direction has its own capacity). A message's path is
GPU -> NVSwitch -> GPU within a node, GPU -> NIC -> switch(es) -> NIC -> GPU between nodes, and its
latency is the sum of the latencies on the path (intra_latency within a node, inter_latency between).

Only the nodes that the simulated groups touch are built (`Cluster.add_ranks`): the rest of a 16,384-GPU
cluster is symmetric to them, so building it would cost time and change nothing. `fabric_links` names the
switch-to-spine links of any path without building anything, to count how many of a collective's
symmetric copies share a link (`collectives.CommModel`).

    python -c "from simulator.topology import demo; demo()"
"""

from __future__ import annotations

import networkx as nx

from simulator.hardware import Hardware, gpu_preset


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
        """The leaf (fat tree) or rail switch (rail-optimized) that GPU `rank`'s NIC plugs into."""
        if self.topology == "rail_optimized":
            return ("rail", self.node_of(rank) // (self.hw.nodes_per_leaf * self.gpus_per_node), self.local_of(rank))
        return ("leaf", self.node_of(rank) // self.hw.nodes_per_leaf)

    def uplink_bandwidth(self) -> float:
        """Bytes/s of a leaf's (or rail switch's) link to the spine: its NIC ports at the fabric's data rate
        over the oversubscription (each switch has nodes_per_leaf x gpus_per_node NIC ports)."""
        hw = self.hw
        ports = hw.nodes_per_leaf * self.gpus_per_node
        return ports * hw.inter_bandwidth * hw.nic_efficiency / max(1.0, hw.oversubscription or 1.0)

    def _add_node(self, n: int) -> None:
        hw, g = self.hw, self.gpus_per_node
        self._nodes.add(n)
        nvs = ("nvswitch", n)
        nvlink = hw.intra_bandwidth * hw.link_efficiency
        leaf_up = self.uplink_bandwidth()
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

    def fabric_links(self, src: int, dst: int) -> tuple:
        """The switch <-> spine links of the path from `src` to `dst` (the only links GPUs share beyond their
        own NVLink port and NIC), without building any node: () within a node or under one switch."""
        if self.node_of(src) == self.node_of(dst):
            return ()
        sa, sb = self._switch_of(src), self._switch_of(dst)
        return () if sa == sb else ((sa, ("spine",)), (("spine",), sb))

    def path_latency(self, src: int, dst: int) -> float:
        return sum(self.latency[e] for e in self.path(src, dst))

    def bottleneck(self, src: int, dst: int) -> float:
        """Smallest link capacity on the path (bytes/s); inf for a rank to itself."""
        p = self.path(src, dst)
        return min((self.capacity[e] for e in p), default=float("inf"))


def demo() -> None:
    cl = Cluster(gpu_preset("a100-80gb"), 32)
    cl.add_ranks(range(32))
    print(f"{cl.graph.number_of_nodes()} vertices, {cl.graph.number_of_edges()} directed links")
    for src, dst in ((0, 1), (0, 8), (0, 31)):
        hops = " -> ".join(str(u) for u, _ in cl.path(src, dst)) + f" -> {cl.path(src, dst)[-1][1]}"
        print(f"{src} -> {dst}: {hops}; latency {cl.path_latency(src, dst) * 1e6:.1f} us, "
              f"bottleneck {cl.bottleneck(src, dst) / 1e9:.0f} GB/s")
