"""Pipeline parallel: GPipe, 1F1B and interleaved 1F1B, simulated event by event as SimPy processes.

The layers are cut into p stages (pp ranks); with interleaving each rank holds v chunks, so there are
p v virtual stages and virtual stage k = c p + r lives on rank r (Megatron-LM's assignment). A micro-batch
goes forward through the virtual stages in order and backward in reverse; a rank runs its list of
forward (F) and backward (B) tasks in a fixed order and waits when an input has not arrived yet. Every
task, every activation send and every gradient send is an event; nothing is a formula.

Orders (m micro-batches per step, rank r of p):
    gpipe             all F, then all B                    holds m micro-batches of activations
    1f1b              p - r - 1 warm-up F, then F B pairs   holds at most p
    interleaved_1f1b  (p - r - 1) 2 + (v - 1) p warm-up F over chunks, then pairs (Megatron-LM 2021)

With equal stages (forward t_f, backward t_b) and free communication the simulated step is
    gpipe, 1f1b:  (m + p - 1)(t_f + t_b)             bubble fraction (p-1)/(m+p-1) of the step
    interleaved:  m (t_f + t_b) (1 + (p-1)/(v m))    bubble (p-1)/(v m) relative to the ideal time
and tests/simulator/test_pipeline_parallel.py holds the simulation to both.

    llama-course simulate configs/llama-7b-a100.yaml --set parallel.pp=4 --trace pp.json
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy


def schedule_order(schedule: str, p: int, m: int, v: int, rank: int) -> list:
    """The (kind, micro_batch, chunk) tasks rank `rank` runs, in order; kind is 'F' or 'B'."""
    if schedule == "gpipe":
        return [("F", i, 0) for i in range(m)] + [("B", i, 0) for i in range(m)]
    if schedule == "1f1b" or v == 1:
        warm = min(p - rank - 1, m)
        order = [("F", i, 0) for i in range(warm)]
        for i in range(m - warm):
            order += [("F", warm + i, 0), ("B", i, 0)]
        return order + [("B", i, 0) for i in range(m - warm, m)]
    if schedule != "interleaved_1f1b":
        raise ValueError(f"unknown schedule {schedule}")
    total = m * v
    if m == p:
        warm = total
    else:
        warm = min((p - rank - 1) * 2 + (v - 1) * p, total)

    def task(kind, k):
        group, within = divmod(k, p * v)
        chunk = within // p
        if kind == "B":
            chunk = v - 1 - chunk
        return (kind, group * p + within % p, chunk)

    order = [task("F", k) for k in range(warm)]
    for i in range(total - warm):
        order += [task("F", warm + i), task("B", i)]
    return order + [task("B", k) for k in range(total - warm, total)]


def peak_in_flight(order: list, layers_per_chunk) -> float:
    """Most layers' worth of micro-batch activations a rank holds at once under this order."""
    held, peak = 0.0, 0.0
    for kind, _, c in order:
        held += layers_per_chunk[c] if kind == "F" else -layers_per_chunk[c]
        peak = max(peak, held)
    return peak


@dataclass
class Task:
    rank: int
    kind: str       # "F" | "B"
    micro_batch: int
    chunk: int
    start: float
    end: float


@dataclass
class PipelineRun:
    """What one simulated step of the pipeline did."""

    p: int
    m: int
    v: int
    tasks: list = field(default_factory=list)           # every F and B, in completion order
    sends: list = field(default_factory=list)           # (rank, dst, kind, micro_batch, start, end)
    compute_end: list = field(default_factory=list)     # per rank: end of its last task
    busy: list = field(default_factory=list)            # per rank: seconds of F + B
    last_backward: dict = field(default_factory=dict)   # (rank, chunk) -> (start, end) of its final B
    backward_spans: dict = field(default_factory=dict)  # (rank, chunk) -> [(start, end)] of every B, in order
    events: int = 0

    @property
    def makespan(self) -> float:
        return max(self.compute_end) if self.compute_end else 0.0


def simulate_pipeline(schedule: str, p: int, m: int, v: int, forward, backward, p2p=0.0,
                      slow=None, record: bool = True) -> PipelineRun:
    """Run one step of a pipeline schedule.

    forward[k], backward[k]: seconds of virtual stage k's F and B for one micro-batch (k = chunk * p + rank);
    p2p: seconds to send one activation or gradient to the next virtual stage (a number, or a list by
    sending virtual stage); slow: {rank: factor} stretches that rank's tasks (a straggler).
    """
    n_virtual = p * v
    if len(forward) != n_virtual or len(backward) != n_virtual:
        raise ValueError(f"need {n_virtual} forward and backward times, got {len(forward)}, {len(backward)}")
    p2p_of = (lambda k: p2p[k]) if isinstance(p2p, (list, tuple)) else (lambda k: p2p)
    slow = slow or {}
    env = simpy.Environment()
    arrived = {}

    def inbox(kind, mb, k):
        key = (kind, mb, k)
        ev = arrived.get(key)
        if ev is None:
            ev = arrived[key] = env.event()
        return ev

    run = PipelineRun(p, m, v, compute_end=[0.0] * p, busy=[0.0] * p)
    counter = [0]

    def deliver(src_rank, kind, mb, k_from, k_to):
        ev = inbox(kind, mb, k_to)
        delay = p2p_of(k_from)
        counter[0] += 1
        if record:
            run.sends.append((src_rank, k_to % p, kind, mb, env.now, env.now + delay))
        if delay <= 0:
            ev.succeed()
        else:
            env.timeout(delay).callbacks.append(lambda _e: ev.succeed())

    def rank_process(r):
        factor = slow.get(r, 1.0)
        for kind, mb, c in schedule_order(schedule, p, m, v, r):
            k = c * p + r
            if kind == "F" and k > 0:
                yield inbox("F", mb, k)
            if kind == "B" and k < n_virtual - 1:
                yield inbox("B", mb, k)
            start = env.now
            duration = (forward[k] if kind == "F" else backward[k]) * factor
            yield env.timeout(duration)
            counter[0] += 1
            run.busy[r] += duration
            if record:
                run.tasks.append(Task(r, kind, mb, c, start, env.now))
            if kind == "F" and k < n_virtual - 1:
                deliver(r, "F", mb, k, k + 1)
            elif kind == "B" and k > 0:
                deliver(r, "B", mb, k, k - 1)
            if kind == "B":
                run.last_backward[(r, c)] = (start, env.now)
                run.backward_spans.setdefault((r, c), []).append((start, env.now))
        run.compute_end[r] = env.now

    for r in range(p):
        env.process(rank_process(r))
    env.run()
    run.events = counter[0]
    if any(e == 0.0 and m > 0 for e in run.compute_end) and sum(forward) + sum(backward) > 0:
        raise RuntimeError("pipeline deadlocked: a rank never finished its schedule")
    return run


def bubble_fraction(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Closed form of the idle share of a step with equal stages and free communication (for tests, docs)."""
    if schedule == "interleaved_1f1b":
        return (p - 1) / (v * m + p - 1)
    return (p - 1) / (m + p - 1)
