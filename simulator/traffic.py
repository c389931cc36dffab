"""Traffic: where a communication's flows go, with its symmetric copies, in the link classes of one pipeline.

A step simulates one pipeline (symmetric ranks once). Two things follow for its communication:

1. Symmetric copies (`SymmetricCopies`). A collective of the simulated group has copies on the other
   groups of the same kind (the DP groups of the other TP ranks, the sends of every replica), all in flight
   at once. They use their own GPUs' NVLink ports and NICs, so they meet only on switch uplinks: for each
   uplink, count the flows of all copies crossing it, and let the simulated group's flows take the most
   loaded copy's route with that count as their weight (`network.Flow.weights`). On a non-blocking fabric
   (`cluster.inter_node.oversubscription` 1) an uplink carries at most what its NICs send and never limits
   a flow, so copies are only counted on an oversubscribed one.

2. Link classes (`link_class`, `folded`). A link of stage r's simulated GPU stands for that link on every
   GPU of stage r: the class ("nic_out", r) is every stage-r NIC's uplink, ("nvl_in", r) every stage-r GPU's
   NVLink input, and so on; switch uplinks keep their own name. `traffic` describes one communication as
   its alone time and the flows of its longest step per link, which `contention.LinkShare` shares out.

    python -c "from simulator.traffic import demo; demo()"
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from simulator.collectives import CommModel, stages_for
from simulator.hardware import gpu_preset
from simulator.network import Flow, max_min_rates
from simulator.topology import Cluster

# ---------------------------------------------------------------------------------------------
# symmetric copies of a collective
# ---------------------------------------------------------------------------------------------

class SymmetricCopies:
    """The copies of a simulated group's collective that run beside it: the group shifted by every rank
    offset sum(i_j x stride_j), i_j < count_j, of `spec` = ((count, stride), ...) (offset 0 is the group).

    Callable as a `collectives.collective_process` router: given a step's flows, it returns each flow's
    route (its own NIC links and the most loaded copy's switch uplinks) and weights (all copies' flows on
    each uplink over the simulated flows on it)."""

    def __init__(self, cluster, spec: tuple):
        self.cluster = cluster
        self.spec = tuple((int(n), int(s)) for n, s in spec if n > 1)
        self.offsets = [sum(i * s for i, (_, s) in zip(idx, self.spec))
                        for idx in itertools.product(*(range(n) for n, _ in self.spec))]

    def __eq__(self, other):
        return isinstance(other, SymmetricCopies) and (self.cluster, self.spec) == (other.cluster, other.spec)

    def __hash__(self):
        return hash((id(self.cluster), self.spec))

    def matter(self, ranks) -> bool:
        """Whether a copy could change the group's time: only on an oversubscribed fabric (at 1:1 an uplink
        carries at most what its NICs send), with copies, for a group that leaves its node."""
        cl = self.cluster
        return (len(self.offsets) > 1 and (cl.hw.oversubscription or 1.0) > 1.0
                and len({cl.node_of(r) for r in ranks}) > 1)

    def __call__(self, flows) -> list:
        cl = self.cluster
        n = cl.num_gpus
        count: dict = defaultdict(float)
        candidates = []
        for s, d, _ in flows:
            options = []
            for o in self.offsets:
                if s + o >= n or d + o >= n:
                    continue
                links = cl.fabric_links(s + o, d + o)
                for link in links:
                    count[link] += 1
                options.append((o, links))
            candidates.append(options)
        cap = cl.uplink_bandwidth()
        routes, used = [], defaultdict(int)
        for (s, d, _), options in zip(flows, candidates):
            o, links = min(options, key=lambda ol: min((cap / count[x] for x in ol[1]), default=float("inf")))
            own = cl.path(s, d)
            if links:
                cl.add_ranks((s + o, d + o))
            routes.append(([e for e in own if e not in cl.fabric_links(s, d)] + list(links), links))
            for link in links:
                used[link] += 1
        return [(tuple(path), {x: count[x] / used[x] for x in fabric}) for path, fabric in routes]


# ---------------------------------------------------------------------------------------------
# a collective's traffic, per link class
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Traffic:
    """One communication as the links see it: `seconds` alone, its bottleneck flows' rate alone `rate`
    (bytes/s), and how many of its flows each link carries at once (`flows`: {link: k})."""

    seconds: float
    rate: float
    flows: tuple    # ((link, k), ...)


def traffic(comm, kind: str, ranks, nbytes: float, copies: SymmetricCopies | None = None) -> Traffic:
    """The Traffic of one collective (or send) on `comm`'s cluster, with its symmetric copies: its alone time
    (`CommModel.time_with_copies`) and the flows of its algorithm's longest step (the algorithm `auto`
    picks), routed among the copies; the flows' rates come from max-min fairness on an idle network."""
    ranks = tuple(ranks)
    seconds = comm.time_with_copies(kind, ranks, nbytes, copies)
    if seconds <= 0:
        return Traffic(0.0, 0.0, ())
    cache = comm.patterns
    alg = "ring" if kind in ("send", "all_to_all") else comm.algorithm(kind, ranks, nbytes)
    key = (kind, ranks, alg, copies if copies is not None and copies.matter(ranks) else None)
    pattern = cache.get(key)
    if pattern is None:
        pattern = cache[key] = _pattern(comm.cluster, kind, ranks, nbytes, alg, key[3])
    return Traffic(seconds, *pattern)


def slowed(t: Traffic, factor: float) -> Traffic:
    """A communication that holds its stream `factor` times its alone time (host-paced, as DeepSpeed 0.3's
    ZeRO-3 collectives: data_parallel.DEEPSPEED_2021_ZERO3_SLOWDOWN). It keeps its flows' rate on the links:
    those collectives synchronised the device before each gather, so a gather waited for the reduce-scatters
    before it; at full rate two such streams share a NIC and together take the sum of their times, as in
    series."""
    return t if factor == 1.0 or t.seconds <= 0 else Traffic(t.seconds * factor, t.rate, t.flows)


def _pattern(cluster, kind, ranks, nbytes, alg, copies) -> tuple:
    cluster.add_ranks(ranks)
    best = None
    for flows, repeat in stages_for(kind, alg, list(ranks), nbytes, cluster):
        routes = copies(flows) if copies is not None else [(cluster.path(s, d), {}) for s, d, _ in flows]
        objs = [Flow(links, b, None, w) for (links, w), (_, _, b) in zip(routes, flows) if links]
        if not objs:
            continue
        max_min_rates(objs, cluster.capacity)
        slow = max(objs, key=lambda f: f.size / f.rate)
        t = repeat * slow.size / slow.rate
        if best is None or t > best[0]:
            count: dict = defaultdict(float)
            for f in objs:
                for link in f.links:
                    count[link] += f.weights.get(link, 1)
            best = (t, slow.rate, tuple(count.items()))
    return (best[1], best[2]) if best else (0.0, ())


def link_class(link, stage_of) -> tuple:
    """The class a physical link belongs to in a one-pipeline simulation: (kind, stage) for a GPU's own
    NVLink port, PCIe lane and NIC (`stage_of(rank)`), the link itself for a switch uplink."""
    u, v = link
    if u[0] == "gpu":
        return ("nvl_out" if v[0] == "nvswitch" else "pcie_out", stage_of(u[1]))
    if v[0] == "gpu":
        return ("nvl_in" if u[0] == "nvswitch" else "pcie_in", stage_of(v[1]))
    if u[0] == "nic":
        return ("nic_out", stage_of(u[1]))
    if v[0] == "nic":
        return ("nic_in", stage_of(v[1]))
    return link


def folded(t: Traffic, capacity: dict, stage_of, fabric: bool = True) -> tuple:
    """(rate, {class: k}, {class: capacity}) of a Traffic in link classes: the most flows any link of a class
    carries (the simulated GPU's links stand for their whole class); `fabric` False leaves out the switch
    uplinks (on a non-blocking fabric they never limit a flow)."""
    flows: dict = {}
    caps: dict = {}
    for link, k in t.flows:
        c = link_class(link, stage_of)
        if not fabric and c is link:
            continue
        flows[c] = max(flows.get(c, 0.0), k)
        caps[c] = capacity[link]
    return t.rate, flows, caps


def demo() -> None:
    """A ring over 4 nodes, one GPU each, with its 7 copies (the other TP ranks) on 2:1 one-node leaves."""
    cl = Cluster(gpu_preset("a100-80gb").with_overrides(oversubscription=2.0, nodes_per_leaf=1), 32)
    comm = CommModel(cl)
    ranks = range(0, 32, 8)
    copies = SymmetricCopies(cl, ((8, 1),))
    for label, c in (("alone", None), ("with its copies", copies)):
        t = traffic(comm, "all_reduce", ranks, 1 << 28, c)
        print(f"all-reduce 256 MiB {label}: {t.seconds * 1e3:.2f} ms, "
              f"{len(t.flows)} links, {t.rate / 1e9:.1f} GB/s per flow")
