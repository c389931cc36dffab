"""Streams: one training step as every pipeline rank's compute, gradient, gather and send streams, sharing links.

`parallel_3d.simulate_step` prices a step on a GPU cluster here (a `cpu` profile's collectives are gloo's
measured curves, not links, and keep `pipeline_parallel.simulate_pipeline` + `data_parallel.gradient_sync`).
One pipeline of p ranks is simulated (each stands for its dp x tp symmetric copies), each rank with

    compute stream   its schedule's forward and backward tasks (`pipeline_parallel.schedule_order`; zero
                     bubble: B and W, the weight gradient, which waits for nothing and sends nothing); a task
                     whose weights are gathered block by block (ZeRO-3, FSDP) runs block by block, each block
                     waiting for its gather
    reduce stream    gradient buckets (`parallel_3d.grad_buckets`: the runtime's plan at the system's
                     cap, `data_parallel.reduce_bucket_mb`), each issued when the backward has produced it (by the
                     work its tensors wait for, `data_parallel.bucket_ready`): through
                     the chunk's last backward, or every backward when the system reduces every micro-batch,
                     or after the last task without overlap
    gather stream    weight all-gathers, one block ahead of the compute when prefetched
    sends            each activation or gradient to the next virtual stage, from the end of the task (the
                     next task starts beside it, as Megatron-LM's and torch's schedules run; DeepSpeed's
                     pipeline engine executes its send instruction before the next: `blocking_sends`)

all of them activities of one `contention.LinkShare`: the reduce and gather streams of stage r and the sends
in and out of it share stage r's NIC classes (with their symmetric copies on the switch uplinks), every
collective in flight on a rank slows its compute by `contention.COMM_SM_SHARE`, and every rate follows
max-min fairness as activities come and go. With nothing overlapping, every activity keeps its alone time
and the step is the one `simulate_pipeline` + `gradient_sync` give (tests/simulator/test_streams.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from simulator.contention import Activity, LinkShare, Stream
from simulator.data_parallel import DEEPSPEED
from simulator.memory import virtual_stage_params
from simulator.model_compression import weight_bytes_per_param
from simulator.pipeline_parallel import PipelineRun, Task, grads_ready, schedule_order
from simulator.traffic import SymmetricCopies, folded, slowed, traffic


@dataclass
class StreamRun(PipelineRun):
    """A PipelineRun with what the other streams did, per pipeline rank."""

    dp_end: list = field(default_factory=list)          # end of the rank's last gradient collective
    dp_busy: list = field(default_factory=list)         # seconds of gradient collectives (each timed alone)
    dp_spans: dict = field(default_factory=dict)        # rank -> [(start, end)] per bucket
    gather_wait: list = field(default_factory=list)     # seconds its compute waited for weight gathers
    slowdown: list = field(default_factory=list)        # seconds its compute lost to communication beside it
    send_wait: list = field(default_factory=list)       # seconds its compute waited for its own sends
    rate_computations: int = 0


@dataclass
class StreamPlan:
    """What each rank's streams move (built by parallel_3d from the config)."""

    schedule: str
    p: int
    m: int
    v: int
    forward: list         # per virtual stage: (compute + recompute seconds, tensor-parallel seconds)
    backward: list
    layers: list          # blocks per virtual stage
    grad_bytes: list      # gradient bytes each virtual stage reduces over its dp group (0: none)
    buckets: list         # bytes on the wire of each gradient bucket per virtual stage (parallel_3d.grad_buckets)
    bucket_ready: list    # the fraction of the stage's backward after which each is ready (grad_bucket_ready)
    overlap: bool
    every_micro_batch: bool
    grad_kind: str        # all_reduce | reduce_scatter
    gather: str           # none | after_step | first_forward | forward | forward_backward
    prefetch: bool
    gather_bytes: float   # one block's weights, all-gathered over the dp group
    blocking_sends: bool = False    # the sender's compute waits for its send (DeepSpeed's pipeline engine)
    comm_slowdown: float = 1.0      # data-parallel collectives take this many times their alone time, at
                                    # that fraction of the rate (host-bound: data_parallel.ZeroSemantics)
    weight_grad: list = field(default_factory=list)   # per virtual stage: of the backward's compute, the
                                                      # weight gradient (zero bubble runs it as W)


def simulate_streams(plan: StreamPlan, comm, layout, p2p_bytes: float, p2p_extra: float, slow=None,
                     record: bool = False, sm_share: float | None = None) -> StreamRun:
    """Run one step of `plan` on `comm`'s cluster with layout `layout` (parallel_3d.Layout).

    p2p_bytes: what one TP rank sends to the next stage per micro-batch (over its NIC); p2p_extra: seconds
    after it that the receiver spends restoring the whole activation (Megatron's all-gather in the node);
    sm_share: the compute a communication in flight takes (None: `contention.COMM_SM_SHARE`)."""
    p, m, v = plan.p, plan.m, plan.v
    n_virtual = p * v
    slow = slow or {}
    env = simpy.Environment()
    cluster = comm.cluster
    classes: dict = {}
    # on a non-blocking fabric the switch uplinks never limit a flow: they are left out, and every stage's
    # data-parallel group is timed as stage 0's (the same group, shifted by whole stages)
    blocking = (cluster.hw.oversubscription or 1.0) > 1.0

    def fold(t, stage=None):
        stage_of = layout.stage_of if stage is None else (lambda _rank: stage)
        rate, flows, caps = folded(t, cluster.capacity, stage_of, blocking)
        classes.update(caps)
        return rate, flows

    share = LinkShare(env, classes, sm_share)
    run = StreamRun(p, m, v, compute_end=[0.0] * p, busy=[0.0] * p, dp_end=[0.0] * p, dp_busy=[0.0] * p,
                    gather_wait=[0.0] * p, slowdown=[0.0] * p, send_wait=[0.0] * p)
    dp_copies = SymmetricCopies(cluster, ((layout.tp, 1),))
    pp_copies = SymmetricCopies(cluster, ((layout.tp, 1), (layout.dp, layout.tp)))

    # ---- per-rank streams --------------------------------------------------------------------------
    reducers, gatherers, bucket_seconds, gather_seconds = [], [], [], []
    for r in range(p):
        group = layout.dp_group(0, r if blocking else 0)
        sizes = {round(b, 6) for k in range(r, n_virtual, p)
                 for b in plan.buckets[k]}
        secs = {b: slowed(traffic(comm, plan.grad_kind, group, b, dp_copies), plan.comm_slowdown) for b in sizes}
        rate, flows = fold(next(iter(secs.values())), r) if secs else (0.0, {})
        reducers.append(Stream(share, [r], rate, flows))
        bucket_seconds.append({b: t.seconds for b, t in secs.items()})
        g = slowed(traffic(comm, "all_gather", group, plan.gather_bytes, dp_copies), plan.comm_slowdown) \
            if plan.gather_bytes > 0 else None
        rate, flows = fold(g, r) if g else (0.0, {})
        gatherers.append(Stream(share, [r], rate, flows))
        gather_seconds.append(g.seconds if g else 0.0)
    pp_ranks = layout.pp_group()
    sends: dict = {}

    def send_traffic(r_from, r_to):
        key = (r_from, r_to)
        if key not in sends:
            t = traffic(comm, "send", (pp_ranks[r_from], pp_ranks[r_to]), p2p_bytes, pp_copies)
            sends[key] = (t.seconds, *fold(t))
        return sends[key]

    # ---- the pipeline ------------------------------------------------------------------------------
    arrived: dict = {}

    def inbox(kind, mb, k):
        ev = arrived.get((kind, mb, k))
        if ev is None:
            ev = arrived[(kind, mb, k)] = env.event()
        return ev

    def deliver(r, kind, mb, k_from, k_to):
        ev = inbox(kind, mb, k_to)
        r_to = k_to % p
        seconds, rate, flows = send_traffic(r, r_to) if p2p_bytes > 0 and p > 1 else (0.0, 0.0, {})
        start = env.now

        def sent(_e=None):
            if record:
                run.sends.append((r, r_to, kind, mb, start, env.now))
            if p2p_extra > 0:
                env.timeout(p2p_extra).callbacks.append(lambda _x: ev.succeed())
            else:
                ev.succeed()

        run.events += 1
        if seconds <= 0:
            sent()
            return None
        done = share.run(Activity(seconds, [r, r_to], flows, rate, holds_sms=False))
        done.callbacks.append(sent)
        return done

    def push_buckets(r, k, fractions_out):
        """Buckets of virtual stage k's gradients: [(fraction of the backward at which it is ready, seconds)]."""
        for f, b in zip(plan.bucket_ready[k], plan.buckets[k]):
            fractions_out.append((f, bucket_seconds[r][round(b, 6)]))

    def reduce(r, seconds):
        """Queue one bucket's collective on rank r's reduce stream (FIFO: it starts when it is ready and the
        bucket before it is through)."""
        pushed = env.now
        run.dp_busy[r] += seconds

        def ended(now):
            start = max(pushed, run.dp_end[r])
            run.dp_end[r] = now
            if record:
                run.dp_spans.setdefault(r, []).append((start, now))
        reducers[r].push(seconds, ended)

    def compute(r, seconds, compute_share, buckets=()):
        """A compute activity on rank r; `buckets`: [(fraction of it, seconds)] to reduce as it passes them."""
        milestones = [(f * seconds, (lambda now, b=b: reduce(r, b))) for f, b in buckets]
        act = Activity(seconds, [r], compute_share=compute_share, milestones=milestones)
        yield share.run(act)
        return act

    def gather(r):
        ev = env.event()
        gatherers[r].push(gather_seconds[r], lambda now: ev.succeed())
        return ev

    ready = grads_ready(plan.schedule)
    split = plan.schedule == "zero_bubble"

    def rank_process(r):
        factor = slow.get(r, 1.0)
        for kind, mb, c in schedule_order(plan.schedule, p, m, v, r):
            k = c * p + r
            blocks = plan.layers[k]
            gathered = kind != "W" and blocks > 0 and gather_seconds[r] > 0 and (
                plan.gather == "forward_backward" or (kind == "F" and (
                    plan.gather == "forward" or (plan.gather == "first_forward" and mb == 0))))
            # a prefetched first gather is issued while the rank still waits for the task's input
            pending = gather(r) if gathered and plan.prefetch else None
            if kind == "F" and k > 0:
                yield inbox("F", mb, k)
            if kind == "B" and k < n_virtual - 1:
                yield inbox("B", mb, k)
            start = env.now
            comp, tp = plan.forward[k] if kind == "F" else plan.backward[k]
            if split:       # zero bubble: B is the backward less its weight gradient, W that alone
                w = plan.weight_grad[k] if plan.weight_grad else comp / 2
                comp, tp = (w, 0.0) if kind == "W" else (comp - w, tp) if kind == "B" else (comp, tp)
            work = (comp + tp) * factor
            f_c = comp / (comp + tp) if comp + tp > 0 else 1.0
            buckets = []
            if kind == ready and plan.grad_bytes[k] > 0 and plan.overlap and (plan.every_micro_batch or mb == m - 1):
                push_buckets(r, k, buckets)
                if len(buckets) > 1 and min(b for _, b in buckets) * len(buckets) >= work:
                    # each bucket takes longer to reduce than the backward to make the next one: the stream is
                    # never idle from the first bucket on, and one item of all their work ends when they would
                    buckets = [(buckets[0][0], sum(b for _, b in buckets))]
            if not gathered:
                act = yield from compute(r, work, f_c, buckets)
                run.slowdown[r] += max(0.0, (act.end - act.start) - work)     # no rounding below 0
            else:
                pending = pending or gather(r)
                per = work / blocks
                for b in range(blocks):
                    t0 = env.now
                    yield pending
                    run.gather_wait[r] += env.now - t0
                    if b + 1 < blocks:
                        pending = gather(r) if plan.prefetch else None
                    part = [((f * blocks - b), s) for f, s in buckets if b < f * blocks <= b + 1 + 1e-12]
                    act = yield from compute(r, per, f_c, part)
                    run.slowdown[r] += max(0.0, (act.end - act.start) - per)
                    if b + 1 < blocks and pending is None:
                        pending = gather(r)
            run.busy[r] += env.now - start
            if record:
                run.tasks.append(Task(r, kind, mb, c, start, env.now))
            run.events += 1
            sending = None
            if kind == "F" and k < n_virtual - 1:
                sending = deliver(r, "F", mb, k, k + 1)
            elif kind == "B" and k > 0:
                sending = deliver(r, "B", mb, k, k - 1)
            if sending is not None and plan.blocking_sends:
                t0 = env.now
                yield sending
                run.send_wait[r] += env.now - t0
            if kind == ready:
                run.last_backward[(r, c)] = (start, env.now)
                run.backward_spans.setdefault((r, c), []).append((start, env.now))
        run.compute_end[r] = env.now
        if not plan.overlap:
            for k in range(r, n_virtual, p):
                if plan.grad_bytes[k] > 0:
                    out = []
                    push_buckets(r, k, out)
                    for _, s in out:
                        reduce(r, s)

    for r in range(p):
        env.process(rank_process(r))
    env.run()
    for r in range(p):
        run.dp_end[r] = max(run.dp_end[r], run.compute_end[r])
    run.rate_computations = share.rate_computations
    if any(e == 0.0 and m > 0 for e in run.compute_end) and any(w[0] + w[1] for w in plan.forward):
        raise RuntimeError("pipeline deadlocked: a rank never finished its schedule")
    return run


def stream_plan(cfg, layout, layers: list, fwd: list, bwd: list, sem, psi_virtual: list,
                grad_wire: float, buckets: list, bucket_ready: list) -> StreamPlan:
    """What each rank's streams move in one step (`streams.StreamPlan`) under the data-parallel rules `sem`."""
    p = cfg.parallel
    per_block = sem.gather in ("first_forward", "forward", "forward_backward") and layout.dp > 1
    psi_block = virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]
    return StreamPlan(
        schedule=p.schedule, p=p.pp, m=cfg.grad_accum_steps, v=p.vpp,
        forward=[(c.compute + c.recompute, c.comm) for c in fwd], backward=[(c.compute + c.recompute, c.comm) for c in bwd],
        layers=layers, grad_bytes=[psi * grad_wire if layout.dp > 1 else 0.0 for psi in psi_virtual],
        buckets=buckets, bucket_ready=bucket_ready, overlap=p.overlap and p.bucket_mb > 0,
        every_micro_batch=sem.reduce_every_micro_batch,
        grad_kind=sem.grad_collective, gather=sem.gather, prefetch=sem.prefetch,
        gather_bytes=psi_block * weight_bytes_per_param(cfg) if per_block else 0.0,
        blocking_sends=sem.system in DEEPSPEED, comm_slowdown=sem.comm_slowdown,
        weight_grad=[c.weight_grad for c in bwd])
