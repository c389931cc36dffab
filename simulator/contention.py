"""Contention: traffic that runs at the same time shares links, and communication slows the compute beside it.

`collectives.CommModel` times each collective alone on the cluster graph. In a training step nothing is
alone: gradient buckets leave by the same NIC as the pipeline's activation sends, ZeRO-3's weight gathers
and gradient reduce-scatters cross it together, every tensor-parallel rank's data-parallel ring runs at the
same moment (`traffic.SymmetricCopies`), and NCCL's kernels take SMs from the matmuls they overlap.

`LinkShare` runs every activity in flight as a fluid:

- a communication is a bundle of flows (`traffic.Traffic` folded into link classes: one link of stage r's
  simulated GPU stands for that link on every GPU of the stage): on each class it puts k flows that move at
  most x bytes/s each, x being their rate alone. Rates are max-min fair per flow over the classes'
  capacities (progressive filling, `network.max_min_rates`), so two equal flows on one link each get half
  of it and a bundle alone keeps its own time exactly. Rates are recomputed when an activity starts or ends,
  over the activities that share a class with it (a component), once per instant.
- progress is counted in seconds of the activity's alone time; `Stream` makes a FIFO of communications with
  one traffic pattern (a rank's gradient buckets) one activity whose work grows as items arrive.
- a compute task on a GPU with a collective in flight runs its compute part at 1 - COMM_SM_SHARE of its
  speed (NCCL runs collectives as kernels on the GPU's SMs, one thread block per channel); the
  tensor-parallel collectives inside the task, which its compute waits for, are not slowed, and neither
  is it by a pipeline send (NCCL moves a send/recv on NCCL_NCHANNELS_PER_NET_PEER = 2 channels by
  default: two thread blocks, under 2% of the SMs).

Tensor-parallel collectives inside a node are not put on the links: they run between compute kernels that
wait for them, and the only traffic that could share an NVLink port with them, a data-parallel ring with
several GPUs per node, moves at its NIC's rate, under a tenth of NVLink's.

    python -c "from simulator.contention import demo; demo()"
"""

from __future__ import annotations

from collections import defaultdict

import simpy

from simulator.network import Flow, max_min_rates

COMM_SM_SHARE = 0.15
"""Share of a GPU's compute that an in-flight NCCL kernel takes from the compute it overlaps (an assumption,
not a fit, and not measured here: this machine has no GPU). Orders of magnitude from published observations:
DeepSeek-V3 (2024, section 3.2.2) drives InfiniBand and NVLink with 20 of an H800's 132 SMs (15%); an NCCL
all-gather beside a GEMM on an H100 was seen holding 24 of 132 SMs (18%, NVIDIA developer forum, 2025);
AMD's study of concurrent computation and communication (Agrawal et al. 2024) measures overlap realizing
only 21% of its ideal speedup on MI300X, the interference this share stands for."""


# ---------------------------------------------------------------------------------------------
# the fluid engine
# ---------------------------------------------------------------------------------------------

class Activity:
    """Work in flight: `total` seconds of alone time, done at `rate` (alone = 1) since `t0` with `progress`
    seconds done then. A communication has flows ({class: k} moving at most `x` bytes/s each) and, a
    collective (`holds_sms`), holds SMs on `ranks`; a compute task runs on `ranks`, its `compute_share`
    slowed by a collective beside it. `milestones`: [(progress, callback(now))] in order, called as the
    progress passes them."""

    __slots__ = ("total", "progress", "rate", "t0", "flows", "x", "ranks", "compute_share", "milestones",
                 "version", "active", "done", "start", "end", "holds_sms")

    def __init__(self, seconds: float, ranks, flows=None, x: float = 0.0, compute_share: float = 1.0,
                 milestones=None, holds_sms: bool = True):
        self.total = float(seconds)
        self.progress = 0.0
        self.rate = 0.0
        self.t0 = 0.0
        self.flows = flows
        self.x = x
        self.ranks = tuple(ranks)
        self.compute_share = compute_share
        self.milestones = list(milestones or [])
        self.holds_sms = holds_sms
        self.version = 0
        self.active = False
        self.done = None
        self.start = self.end = None


class LinkShare:
    """Activities on shared link classes, their rates max-min fair and recomputed as they come and go."""

    def __init__(self, env: simpy.Environment, capacity: dict, sm_share: float | None = None):
        self.env = env
        self.capacity = capacity
        self.sm_share = COMM_SM_SHARE if sm_share is None else sm_share
        self.comm_on = defaultdict(int)          # rank -> communications holding its SMs
        self.compute_on = defaultdict(set)       # rank -> compute activities running on it
        self.by_class = defaultdict(set)         # class -> communications with flows on it
        self._dirty: set = set()
        self._dirty_ranks: set = set()
        self._pending = False
        self.rate_computations = 0

    def run(self, act: Activity) -> simpy.Event:
        """Start an activity; the returned event succeeds when it is done."""
        act.t0 = act.start = self.env.now
        act.done = self.env.event()
        act.active = True
        if act.total <= 0:
            self._finish(act)
            return act.done
        if act.flows is None:
            for r in act.ranks:
                self.compute_on[r].add(act)
            self._set_rate(act, self._compute_rate(act))
        else:
            for c in act.flows:
                self.by_class[c].add(act)
            if act.holds_sms:
                for r in act.ranks:
                    self.comm_on[r] += 1
                    self._dirty_ranks.add(r)
            self._dirty.add(act)
            self._later()
        return act.done

    def extend(self, act: Activity, seconds: float, milestone=None) -> None:
        """Add `seconds` of work to an active activity (a FIFO stream taking one more bucket); `milestone`:
        a callback for when that work is done."""
        self._rebase(act)
        act.total += seconds
        if milestone is not None:
            act.milestones.append((act.total, milestone))
        self._arm(act)

    # ---- rates ---------------------------------------------------------------------------------
    def _compute_rate(self, act: Activity) -> float:
        if self.sm_share <= 0 or not any(self.comm_on[r] for r in act.ranks):
            return 1.0
        f = act.compute_share
        return 1.0 / (f / (1.0 - self.sm_share) + (1.0 - f))

    def _later(self) -> None:
        if not self._pending:           # everything that changes at this instant: one computation
            self._pending = True
            self.env.timeout(0).callbacks.append(self._update)

    def _update(self, _ev) -> None:
        self._pending = False
        seeds, ranks = self._dirty, self._dirty_ranks
        self._dirty, self._dirty_ranks = set(), set()
        component, stack = set(), [a for a in seeds if a.active and a.flows is not None]
        while stack:
            a = stack.pop()
            if a not in component:
                component.add(a)
                for c in a.flows:
                    stack.extend(b for b in self.by_class[c] if b not in component)
        if component:
            self.rate_computations += 1
            acts = list(component)
            flows = [Flow(tuple(a.flows) + (("own", i),), 1.0, None, a.flows) for i, a in enumerate(acts)]
            cap = {c: self.capacity[c] for a in acts for c in a.flows}
            cap.update({("own", i): a.x for i, a in enumerate(acts)})
            max_min_rates(flows, cap)
            for a, f in zip(acts, flows):
                self._set_rate(a, min(1.0, f.rate / a.x) if a.x > 0 else 1.0)
        for r in ranks:
            for a in list(self.compute_on[r]):
                self._set_rate(a, self._compute_rate(a))

    def _rebase(self, act: Activity) -> None:
        now = self.env.now
        act.progress += act.rate * (now - act.t0)
        act.t0 = now

    def _set_rate(self, act: Activity, rate: float) -> None:
        if not act.active or (rate == act.rate and act.version):
            return
        self._rebase(act)
        act.rate = rate
        self._arm(act)

    def _arm(self, act: Activity) -> None:
        act.version += 1
        if act.rate <= 0:
            return
        target = min(act.total, act.milestones[0][0]) if act.milestones else act.total
        version = act.version
        ev = self.env.timeout(max(0.0, (target - act.progress) / act.rate))
        ev.callbacks.append(lambda _e: self._due(act, version))

    def _due(self, act: Activity, version: int) -> None:
        if version != act.version or not act.active:
            return
        self._rebase(act)
        eps = 1e-9 * act.total + 1e-15
        while act.milestones and act.milestones[0][0] <= act.progress + eps:
            _, callback = act.milestones.pop(0)
            callback(self.env.now)
        if act.progress >= act.total - eps:
            self._finish(act)
        elif act.version == version:
            self._arm(act)

    def _finish(self, act: Activity) -> None:
        act.active = False
        act.end = self.env.now
        if act.flows is None:
            for r in act.ranks:
                self.compute_on[r].discard(act)
        else:
            for c in act.flows:
                self.by_class[c].discard(act)
                self._dirty.update(self.by_class[c])
            if act.holds_sms:
                for r in act.ranks:
                    self.comm_on[r] -= 1
                    self._dirty_ranks.add(r)
            self._later()
        act.done.succeed()


class Stream:
    """A FIFO of communications with one traffic pattern on one rank (a comm stream of gradient buckets or
    of weight gathers): while busy it is one Activity whose work grows with every item queued."""

    def __init__(self, share: LinkShare, ranks, x: float, flows: dict):
        self.share = share
        self.ranks, self.x, self.flows = tuple(ranks), x, flows
        self.current: Activity | None = None
        self.end = 0.0           # when its last item ended

    def push(self, seconds: float, on_done=None) -> None:
        """Queue `seconds` of alone time; `on_done(now)` when that item is through."""
        share = self.share
        if seconds <= 0:
            if on_done:
                on_done(share.env.now)
            return
        act = self.current
        if act is not None and act.active:
            share.extend(act, seconds, self._ender(on_done))
            return
        act = self.current = Activity(seconds, self.ranks, self.flows if self.x > 0 else {}, self.x or 1.0,
                                      milestones=[(seconds, self._ender(on_done))])
        share.run(act)

    def _ender(self, on_done):
        def ended(now):
            self.end = now
            if on_done:
                on_done(now)
        return ended

    def idle(self) -> bool:
        return self.current is None or not self.current.active


def demo() -> None:
    """Two transfers on one NIC take twice as long; beside a compute task, they slow it by COMM_SM_SHARE."""
    env = simpy.Environment()
    share = LinkShare(env, {("nic_out", 0): 25e9})
    ends = {}

    def run(name, act):
        yield share.run(act)
        ends[name] = env.now

    env.process(run("send a", Activity(1.0, [0], {("nic_out", 0): 1}, 25e9)))
    env.process(run("send b", Activity(1.0, [0], {("nic_out", 0): 1}, 25e9)))
    env.process(run("matmul", Activity(1.0, [0], compute_share=1.0)))
    env.run()
    for name, t in ends.items():
        print(f"{name}: done at {t:.3f} s (1.000 s alone)")
