"""Collectives: ring, tree and hierarchical algorithms as SimPy processes of flows over the cluster graph.

An algorithm is a sequence of steps; in each step every rank sends one chunk at once (flows share links
through `network.Network`). With alpha the path latency and B the bottleneck bandwidth:

    ring all-reduce of S bytes on n ranks   2 (n-1) steps of S/n:  t = 2 (n-1) (alpha + S / (n B))
                                            (across nodes: g rings of S/g at once, one per NIC, as NCCL)
    ring reduce-scatter / all-gather        (n-1) steps of S/n:    t = (n-1) (alpha + S / (n B))
    tree all-reduce (double binary, k       reduce up + broadcast down, pipelined: 2 (D + k - 1) steps,
      chunks, NCCL's)                       two trees of S/2 each
    hierarchical all-reduce                 reduce-scatter in the node (g GPUs), all-reduce of S/g between
                                            nodes (g rails at once), all-gather in the node
    all-to-all                              n-1 shifted permutations of S/n each
    send / recv                             one flow: alpha + S / B

Bandwidth is reported as nccl-tests does (doc/PERFORMANCE.md): algbw = S / t; busbw = algbw x 2(n-1)/n
for all-reduce, x (n-1)/n for reduce-scatter, all-gather and all-to-all, x 1 for send/recv.

The steps of ring and hierarchical algorithms are identical (same flows, empty network at each start), so
by default one step is simulated with full contention and the others are its copies; `exact=True` runs
every step as its own set of SimPy flows (the tests hold the two equal). That keeps a 128-node ring at
one flow computation instead of 254.

    python -c "from simulator.collectives import demo; demo()"
"""

from __future__ import annotations

import math
from collections import defaultdict

import simpy

from simulator.hardware import gpu_preset
from simulator.network import Network
from simulator.topology import Cluster

MAX_CHANNEL_FLOWS = 8192   # larger multi-channel rings time one step on their first nodes (ring_stages)
KINDS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "send")
ALGORITHMS = ("ring", "tree", "hierarchical")


def bus_factor(kind: str, n: int) -> float:
    """busbw / algbw of nccl-tests for a collective over n ranks."""
    if n <= 1:
        return 1.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    if kind in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) / n
    return 1.0


def bandwidths(kind: str, n: int, nbytes: float, seconds: float) -> tuple:
    """(algbw, busbw) in bytes/s."""
    algbw = nbytes / seconds if seconds > 0 else float("inf")
    return algbw, algbw * bus_factor(kind, n)


# ---------------------------------------------------------------------------------------------
# algorithms: each returns a list of stages (flows, repeat); a stage's flows start together
# ---------------------------------------------------------------------------------------------

def _ring(ranks, chunk, steps):
    n = len(ranks)
    return [([(ranks[i], ranks[(i + 1) % n], chunk) for i in range(n)], steps)]


def ring_stages(kind: str, ranks, nbytes: float, cluster: Cluster | None = None) -> list:
    """One ring; across nodes with g GPUs each, g rings (NCCL's channels), one leaving each node by each NIC.

    Channel c visits every node's GPUs rotated by c, so it leaves a node from a different GPU (and NIC)
    than channel c+1: all g NICs carry traffic at once and each ring moves S/g.

    Every step of the rings loads every node alike, so beyond MAX_CHANNEL_FLOWS flows the step is timed on
    the rings of the first nodes only (enough to cross leaf switches as the whole ring does), with the
    whole ring's chunk and step count: the same time, without a max-min computation over every flow.
    """
    n = len(ranks)
    if n <= 1:
        return []
    steps = 2 * (n - 1) if kind == "all_reduce" else n - 1
    nodes = _by_node(ranks, cluster) if cluster is not None else [list(ranks)]
    g = len(nodes[0])
    if len(nodes) == 1 or g == 1 or any(len(x) != g for x in nodes):
        return _ring(ranks, nbytes / n, steps)
    if n * g > MAX_CHANNEL_FLOWS:
        nodes = nodes[:max(2, MAX_CHANNEL_FLOWS // (g * g))]
    flows = []
    for c in range(g):
        order = [grp[(i + c) % g] for grp in nodes for i in range(g)]
        flows += [(order[i], order[(i + 1) % len(order)], nbytes / (n * g)) for i in range(len(order))]
    return [(flows, steps)]


def _by_node(ranks, cluster: Cluster) -> list:
    by_node = defaultdict(list)
    for r in ranks:
        by_node[cluster.node_of(r)].append(r)
    return [by_node[k] for k in sorted(by_node)]


def tree_stages(kind: str, ranks, nbytes: float, cluster: Cluster) -> list:
    """NCCL's double binary tree all-reduce, pipelined in k chunks: reduce to the roots, broadcast back.

    Two binary trees (heap order over the members, and over them reversed) each carry half the bytes;
    a member that is interior in one (two children to receive from) is a leaf of the other, so each sends and
    receives about S per phase instead of one tree's 2 S: about twice one tree's bandwidth. When the group
    holds g > 1 GPUs of every node, the trees join nodes, as NCCL's do, once per channel: channel c's trees
    run between the nodes' GPU c (its NIC), each carrying S/g, and a chain over NVLink inside each node
    brings the node's sum to that GPU (g - 1 more pipeline steps; NVLink is not the bottleneck), so all g
    NICs of a node carry tree traffic. The chains' flows use NVLink, the trees' the NICs: no link carries
    both, and every node's chains load its NVLink alike, so one node's chains stand for all of them."""
    if len(ranks) <= 1:
        return []
    shape = tree_shape(ranks, cluster)
    members, chains, depth = shape[:3]
    k = tree_chunks(shape, nbytes)
    share = nbytes / len(members)
    up = [(a, b, share / k) for chain in chains for a, b in zip(chain, chain[1:])]
    for group in members:
        for order in (group, group[::-1]):
            up += [(order[i], order[(i - 1) // 2], share / (2 * k)) for i in range(1, len(group))]
    down = [(d, s, b) for s, d, b in up]
    return [(up, depth + k - 1), (down, depth + k - 1)]


def tree_shape(ranks, cluster: Cluster) -> tuple:
    """(members per channel, NVLink chains, pipeline depth, alpha, B) of `tree_stages` over these ranks."""
    ranks = list(ranks)
    nodes = _by_node(ranks, cluster)
    g = len(nodes[0])
    chains = []
    if len(nodes) > 1 and g > 1 and all(len(x) == g for x in nodes):
        channels = max(1, min(g, MAX_CHANNEL_FLOWS // (2 * len(nodes))))
        members = [[grp[c] for grp in nodes] for c in range(channels)]
        grp = nodes[0]
        chains = [[grp[(c + 1 + j) % g] for j in range(g)] for c in range(channels)]   # ends at grp[c]
    else:
        members = [ranks]
    m = len(members[0])
    depth = int(math.floor(math.log2(m))) + (g - 1 if chains else 0)
    first = members[0]
    alpha = max(cluster.path_latency(first[i], first[(i - 1) // 2]) for i in range(1, m))
    bw = min(cluster.bottleneck(first[i], first[(i - 1) // 2]) for i in range(1, m))
    return members, chains, depth, alpha, bw


def tree_chunks(shape: tuple, nbytes: float) -> int:
    """Chunks k the tree pipelines S in: sqrt(depth x S / (alpha B)) per channel, between 1 and 256."""
    members, _, depth, alpha, bw = shape
    share = nbytes / len(members)
    return max(1, min(256, int(round(math.sqrt(max(depth - 1, 0) * share / max(alpha * bw, 1e-30))))))


def hierarchical_stages(kind: str, ranks, nbytes: float, cluster: Cluster) -> list:
    """Intra-node phase over NVLink, inter-node phase per rail, intra-node phase again."""
    nodes = _by_node(ranks, cluster)
    g, m = len(nodes[0]), len(nodes)
    if any(len(x) != g for x in nodes) or g == 1 or m == 1:
        return ring_stages(kind, ranks, nbytes)
    intra = [(grp[i], grp[(i + 1) % g], nbytes / g) for grp in nodes for i in range(g)]
    inter_chunk = nbytes / (g * m)
    inter = [(nodes[j][i], nodes[(j + 1) % m][i], inter_chunk) for i in range(g) for j in range(m)]
    if kind == "all_reduce":
        return [(intra, g - 1), (inter, 2 * (m - 1)), (intra, g - 1)]
    if kind == "reduce_scatter":
        return [(intra, g - 1), (inter, m - 1)]
    if kind == "all_gather":
        return [(inter, m - 1), (intra, g - 1)]
    return ring_stages(kind, ranks, nbytes)


def all_to_all_stages(ranks, nbytes: float) -> list:
    n = len(ranks)
    return [([(ranks[i], ranks[(i + k) % n], nbytes / n) for i in range(n)], 1) for k in range(1, n)]


def stages_for(kind: str, algorithm: str, ranks, nbytes: float, cluster: Cluster) -> list:
    if kind == "send":
        return [([(ranks[0], ranks[1], nbytes)], 1)]
    if kind == "all_to_all":
        return all_to_all_stages(ranks, nbytes)
    if algorithm == "ring":
        return ring_stages(kind, ranks, nbytes, cluster)
    if algorithm == "tree":
        if kind != "all_reduce":
            raise ValueError("tree is an all-reduce algorithm")
        return tree_stages(kind, ranks, nbytes, cluster)
    if algorithm == "hierarchical":
        return hierarchical_stages(kind, ranks, nbytes, cluster)
    raise ValueError(f"unknown algorithm {algorithm}")


# ---------------------------------------------------------------------------------------------
# running them
# ---------------------------------------------------------------------------------------------

def collective_process(env: simpy.Environment, net: Network, stages: list, exact: bool = False, router=None):
    """SimPy process: run the stages' steps one after the other (each step: all its flows, then a barrier).

    `router(flows)` -> [(links, weights)] per flow routes a step's flows among its symmetric copies
    (`contention.SymmetricCopies`); None = each flow alone on its own path."""
    for flows, repeat in stages:
        routes = router(flows) if router else [(None, None)] * len(flows)
        for _ in range(repeat if exact else 1):
            start = env.now
            yield env.all_of([net.transfer(s, d, b, w, links) for (s, d, b), (links, w) in zip(flows, routes)])
            if not exact and repeat > 1:
                yield env.timeout((env.now - start) * (repeat - 1))


def run_collective(cluster: Cluster, kind: str, ranks, nbytes: float, algorithm: str = "ring",
                   exact: bool = False, router=None) -> float:
    """Seconds one collective takes on a network that only it (and, with `router`, its symmetric copies) uses."""
    ranks = list(ranks)
    if len(ranks) <= 1 or nbytes <= 0:
        return 0.0
    cluster.add_ranks(ranks)
    env = simpy.Environment()
    net = Network(env, cluster)
    env.process(collective_process(env, net, stages_for(kind, algorithm, ranks, nbytes, cluster), exact, router))
    env.run()
    return env.now


class CommModel:
    """Collective times on one cluster, cached by (kind, ranks, bytes): strategies ask it, never SimPy directly.

    `algorithm="auto"` takes the fastest of ring, hierarchical (when the group spans nodes with several
    GPUs each) and tree (all-reduce), as NCCL's tuner picks per size. A `cpu` profile measured by `bench`
    answers from its gloo table instead (`Hardware.measured_collective`): gloo is not a set of links.
    """

    def __init__(self, cluster: Cluster, exact: bool = False):
        self.cluster = cluster
        self.exact = exact
        self._cache: dict = {}
        self._runs: dict = {}        # (kind, ranks, bytes, algorithm, copies) -> seconds
        self.patterns: dict = {}     # contention.traffic: each collective's flows per link, by group

    def time(self, kind: str, ranks, nbytes: float, algorithm: str = "auto", back_to_back: bool = False) -> float:
        """Seconds of one collective; `back_to_back`: issued right after another (matters on cpu only)."""
        ranks = tuple(ranks)
        if len(ranks) <= 1 or nbytes <= 0:
            return 0.0
        key = (kind, ranks, float(nbytes), algorithm, back_to_back)
        t = self._cache.get(key)
        if t is None:       # cpu: gloo as measured
            t = self.cluster.hw.measured_collective(kind, len(ranks), nbytes, back_to_back)
        if t is None:
            t = min(self._run(kind, ranks, nbytes, a) for a in self.candidates(kind, ranks, algorithm))
            self._cache[key] = t
        return t

    def _run(self, kind: str, ranks: tuple, nbytes: float, algorithm: str, router=None) -> float:
        key = (kind, ranks, float(nbytes), algorithm, router)
        t = self._runs.get(key)
        if t is None:
            t = self._runs[key] = run_collective(self.cluster, kind, ranks, nbytes, algorithm, self.exact, router)
        return t

    def algorithm(self, kind: str, ranks, nbytes: float) -> str:
        """The algorithm `time(..., "auto")` takes for this collective (the fastest candidate)."""
        ranks = tuple(ranks)
        algs = self.candidates(kind, ranks, "auto")
        return algs[0] if len(algs) == 1 else min(algs, key=lambda a: self.time(kind, ranks, nbytes, a))

    def time_with_copies(self, kind: str, ranks, nbytes: float, copies) -> float:
        """Seconds of one collective while its symmetric copies (`contention.SymmetricCopies`: the same
        collective on every tensor-parallel rank's group, a send on every replica) run beside it and share
        the switch uplinks: `time()` when the fabric has no uplink any copy could saturate."""
        ranks = tuple(ranks)
        if copies is None or not copies.matter(ranks) or len(ranks) <= 1 or nbytes <= 0:
            return self.time(kind, ranks, nbytes)
        alg = self.algorithm(kind, ranks, nbytes)
        return self._run(kind, ranks, nbytes, alg, copies)

    def candidates(self, kind: str, ranks, algorithm: str) -> list:
        if algorithm != "auto" or kind in ("send", "all_to_all"):
            return [algorithm if algorithm != "auto" else "ring"]
        nodes = {self.cluster.node_of(r) for r in ranks}
        algs = ["ring"]
        if 1 < len(nodes) < len(ranks):
            algs.append("hierarchical")
        if kind == "all_reduce" and len(nodes) > 2:
            algs.append("tree")
        return algs


def demo() -> None:
    for gpu in ("a100-80gb", "h100-sxm"):
        cl = Cluster(gpu_preset(gpu), 64)
        comm = CommModel(cl)
        for n in (8, 16, 64):
            t = comm.time("all_reduce", range(n), 1 << 30)
            alg, bus = bandwidths("all_reduce", n, 1 << 30, t)
            print(f"{gpu} all_reduce 1 GiB on {n:2d} GPUs: {t * 1e3:7.2f} ms  algbw {alg / 1e9:6.1f} GB/s  "
                  f"busbw {bus / 1e9:6.1f} GB/s")
