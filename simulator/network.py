"""Network: messages as flows over graph paths, sharing each link's bandwidth max-min fairly (SimPy).

Between the alpha-beta formula (every message gets the full link) and a packet simulation sits the
flow-level model: a message of S bytes from u to v waits the path latency alpha, then flows at a rate
that changes whenever another flow starts or ends. Rates are max-min fair (progressive filling): find the
link whose capacity divided by its unfixed flows is smallest, give that share to each of its flows, remove
them and their bandwidth, repeat. A flow alone on a path therefore takes alpha + S / B_bottleneck; n flows
into one link take n times longer each.

    env = simpy.Environment(); net = Network(env, cluster)
    env.process(...yield net.transfer(0, 8, 1 << 20)...); env.run()

Symmetric copies: a flow may stand for several identical flows that share some of its links (the same ring
run by every tensor-parallel rank's data-parallel group crosses one leaf uplink eight times): `Flow.weights`
gives, per link, how many flows it counts for there, and max-min fairness divides that link among all of
them, so a link crossed by k copies gives each 1/k of what it has left.

Cost: one rate computation per flow arrival or departure; flows that finish together are retired together,
and flows that start together are added together, so a symmetric collective step (n equal flows) costs
one computation, not n.
"""

from __future__ import annotations

import simpy

from simulator.topology import Cluster

_EPS = 1e-12


class Flow:
    __slots__ = ("links", "remaining", "rate", "done", "size", "weights")

    def __init__(self, links, size, done, weights=None):
        self.links = links
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.done = done
        self.weights = weights or {}    # link -> flows this one stands for on it (symmetric copies), default 1


def max_min_rates(flows, capacity: dict) -> None:
    """Set `flow.rate` for every flow by progressive filling over the links' capacities (a flow counts
    `flow.weights[link]` times on a link where it stands for several symmetric copies)."""
    count: dict = {}
    for f in flows:
        for link in f.links:
            count[link] = count.get(link, 0) + f.weights.get(link, 1)
    cap = {link: capacity[link] for link in count}
    unfixed = set(range(len(flows)))
    by_link: dict = {}
    for i, f in enumerate(flows):
        for link in f.links:
            by_link.setdefault(link, []).append(i)
    while unfixed:
        share = min(cap[link] / n for link, n in count.items() if n > 1e-9)
        tight = [link for link, n in count.items() if n > 1e-9 and cap[link] / n <= share * (1 + 1e-9)]
        for link in tight:
            for i in by_link[link]:
                if i in unfixed:
                    unfixed.discard(i)
                    flows[i].rate = share
                    for other in flows[i].links:
                        w = flows[i].weights.get(other, 1)
                        cap[other] -= share * w
                        count[other] -= w


class Network:
    """Flows over a Cluster's links, advanced by a SimPy environment."""

    def __init__(self, env: simpy.Environment, cluster: Cluster):
        self.env = env
        self.cluster = cluster
        self.flows: list = []
        self._last = 0.0
        self._generation = 0
        self._pending = False
        self.bytes_sent = 0.0
        self.rate_computations = 0

    def transfer(self, src: int, dst: int, nbytes: float, weights=None, links=None) -> simpy.Process:
        """A SimPy process that ends when `nbytes` from GPU src have arrived at GPU dst; `weights`: {link:
        symmetric copies of this flow on that link} (see the module docstring); `links`: the route, when it
        is not the cluster's own path (a copy's switch links standing for the representative's)."""
        return self.env.process(self._transfer(src, dst, nbytes, weights, links))

    def _transfer(self, src, dst, nbytes, weights=None, links=None):
        path = self.cluster.path(src, dst) if links is None else links
        latency = sum(self.cluster.latency[e] for e in path)
        if latency > 0:
            yield self.env.timeout(latency)
        if nbytes <= 0 or not path:
            return
        done = self.env.event()
        self._advance()
        self.flows.append(Flow(path, nbytes, done, weights))
        self.bytes_sent += nbytes
        if not self._pending:           # flows arriving at the same instant share one rate computation
            self._pending = True
            self._generation += 1       # the wake-up scheduled before this arrival is stale
            self.env.timeout(0).callbacks.append(self._on_arrivals)
        yield done

    def _on_arrivals(self, _ev) -> None:
        self._pending = False
        self._advance()
        self._reschedule()

    def _advance(self) -> None:
        dt = self.env.now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self._last = self.env.now

    def _reschedule(self) -> None:
        self._generation += 1
        if not self.flows:
            return
        max_min_rates(self.flows, self.cluster.capacity)
        self.rate_computations += 1
        delay = min(max(f.remaining, 0.0) / f.rate for f in self.flows)
        gen = self._generation
        wake = self.env.timeout(delay)
        wake.callbacks.append(lambda _ev: self._on_wake(gen))

    def _on_wake(self, gen: int) -> None:
        if gen != self._generation:
            return                      # a newer arrival or departure already rescheduled
        self._advance()
        still, finished = [], []
        for f in self.flows:
            (finished if f.remaining <= _EPS * f.size + 1e-6 else still).append(f)
        self.flows = still
        for f in finished:
            f.done.succeed()
        self._reschedule()


def transfer_time(cluster: Cluster, flows) -> float:
    """Seconds until every (src, dst, nbytes) of `flows`, started together, has arrived."""
    env = simpy.Environment()
    net = Network(env, cluster)
    procs = [net.transfer(s, d, n) for s, d, n in flows]
    if procs:
        env.run(env.all_of(procs))
    return env.now
