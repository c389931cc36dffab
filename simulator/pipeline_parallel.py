"""Pipeline parallel: GPipe, 1F1B and interleaved 1F1B, simulated event by event as SimPy processes.

The layers are cut into p stages (pp ranks); with interleaving each rank holds v chunks, so there are
p v virtual stages and virtual stage k = c p + r lives on rank r (Megatron-LM's assignment). A micro-batch
goes forward through the virtual stages in order and backward in reverse; a rank runs its list of
forward (F) and backward (B) tasks in a fixed order and waits when an input has not arrived yet. Every
task, every activation send and every gradient send is an event; nothing is a formula.

Orders (m micro-batches per step, rank r of p):
    gpipe             all F, then all B                    holds m micro-batches of activations
    1f1b              p - r - 1 warm-up F, then F B pairs   holds at most p
    interleaved_1f1b  (p - r - 1) 2 + (v - 1) N warm-up F over chunks, then pairs (Megatron-LM 2021)

Interleaving runs the micro-batches in rounds of N: each chunk takes the N micro-batches of a round before
the next chunk does. N = p when p divides m (Megatron-LM 2021); otherwise m // p rounds of N = m / (m // p)
micro-batches each, as torch's ScheduleInterleaved1F1B and Megatron-Core (`microbatch_group_size_per_vp_stage`)
run them (`interleave_group`), so m need not be a multiple of p, but must split into equal rounds.

Which layers each virtual stage holds is `partition_layers`: an even split, or, as Llama 3 405B ran, one
layer fewer on the first and last stage (`first_stage_layers`, `last_stage_layers`) with the rest split
evenly over the middle; a rank's layers are then dealt over its v chunks, so chunks may be uneven (and the
first chunk of the first stage may hold only the embedding). The runtime imports the same two functions.

With equal stages (forward t_f, backward t_b) and free communication the simulated step is
    gpipe, 1f1b:  (m + p - 1)(t_f + t_b)             bubble fraction (p-1)/(m+p-1) of the step
    interleaved:  m (t_f + t_b) (1 + (p-1)/(v m))    bubble (p-1)/(v m) relative to the ideal time
and tests/simulator/test_pipeline_parallel.py holds the simulation to both.

    llama-course simulate configs/llama-7b-a100.yaml --set parallel.pp=4 --trace pp.json
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from simulator.schema import ConfigError

TASK_NAMES = {"F": "forward", "B": "backward", "W": "backward_weight"}
"""A task's span name in traces, simulated and measured."""


def interleave_group(p: int, m: int) -> int:
    """Micro-batches per round N of the interleaved schedule: p when p divides m, else m / (m // p).

    Raises ValueError when m < p or m does not split into m // p equal rounds (config validation names
    the field first: `simulator.config`)."""
    rounds = max(1, m // p)
    if m < p or m % rounds:
        raise ValueError(f"interleaved 1F1B needs m >= p and m // p equal rounds, got m {m}, p {p}")
    return m // rounds


def schedule_order(schedule: str, p: int, m: int, v: int, rank: int) -> list:
    """The (kind, micro_batch, chunk) tasks rank `rank` runs, in order; kind is 'F' or 'B' (zero bubble:
    'F', 'B' the input gradient and 'W' the weight gradient)."""
    if schedule == "gpipe":
        return [("F", i, 0) for i in range(m)] + [("B", i, 0) for i in range(m)]
    if schedule == "zero_bubble":
        return zero_bubble_order(p, m, v, rank)
    if schedule == "1f1b" or v == 1:
        warm = min(p - rank - 1, m)
        order = [("F", i, 0) for i in range(warm)]
        for i in range(m - warm):
            order += [("F", warm + i, 0), ("B", i, 0)]
        return order + [("B", i, 0) for i in range(m - warm, m)]
    if schedule != "interleaved_1f1b":
        raise ValueError(f"unknown schedule {schedule}")
    n = interleave_group(p, m)
    total = m * v
    warm = min((p - rank - 1) * 2 + (v - 1) * n, total)
    order = [_interleaved_task("F", k, n, v) for k in range(warm)]
    for i in range(total - warm):
        order += [_interleaved_task("F", warm + i, n, v), _interleaved_task("B", i, n, v)]
    return order + [_interleaved_task("B", k, n, v) for k in range(total - warm, total)]


def _interleaved_task(kind: str, k: int, n: int, v: int) -> tuple:
    """The k-th forward (or backward) of a rank running m micro-batches over v chunks in rounds of n."""
    group, within = divmod(k, n * v)
    chunk = within // n
    if kind != "F":
        chunk = v - 1 - chunk
    return (kind, group * n + within % n, chunk)


def zero_bubble_order(p: int, m: int, v: int, rank: int) -> list:
    """Zero bubble (Qi et al. 2023, ZB-H1; with v > 1 chunks, torch's ScheduleInterleavedZeroBubble): the
    backward split into B, the input gradient the previous stage waits for, and W, the weight gradient no
    one waits for. Rank r runs (p - r - 1) + (v - 1) N warm-up forwards, then F B pairs; it holds back the
    W of its first r backwards and runs one W (the oldest held) after every later B, and the r held back
    at the end, where 1F1B's rank r would idle (p = 4, m = 4; each letter one unit of time, 1F1B's
    backward of two units split into B and W):

        1F1B  r0 F0 F1 F2 F3 .  .  .  .  .  .  B0 B0 .  B1 B1 .  B2 B2 .  B3 B3     21 units
              r3 .  .  .  F0 B0 B0 F1 B1 B1 F2 B2 B2 F3 B3 B3 .  .  .  .  .  .
        ZB-H1 r0 F0 F1 F2 F3 .  .  .  B0 W0 B1 W1 B2 W2 B3 W3                       15 units
              r3 .  .  .  F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2 W3

    With equal stages (t_F, t_B, t_W) and free communication the bubble shrinks from 1F1B's
    (p - 1)(t_F + t_B + t_W) to (p - 1)(t_F + t_B - t_W) (t_W <= t_F + t_B), at 1F1B's peak of p
    micro-batches in flight (a micro-batch's activations are held until its W). The same order as torch's
    (tests/simulator/test_pipeline_parallel.py compares them action by action)."""
    n = interleave_group(p, m) if v > 1 else m
    total = m * v
    warm = min(p - rank - 1 + (v - 1) * n, total)
    order = [_interleaved_task("F", k, n, v) for k in range(warm)]
    held: list = []

    def backward(i):
        order.append(_interleaved_task("B", i, n, v))
        held.append(i)
        if i >= rank:
            order.append(_interleaved_task("W", held.pop(0), n, v))

    for i in range(total - warm):
        order.append(_interleaved_task("F", warm + i, n, v))
        backward(i)
    for i in range(total - warm, total):
        backward(i)
    return order + [_interleaved_task("W", i, n, v) for i in held]


def check_stage_layers(n_layers: int, p) -> None:
    """Config validation of uneven stages (`p`: the parallel section): first and last at least one layer
    each, and every middle stage too, or ConfigError naming the field."""
    for name in ("first_stage_layers", "last_stage_layers"):
        value = getattr(p, name)
        if value is None:
            continue
        if p.pp < 2:
            raise ConfigError(f"parallel.{name}: needs pp >= 2 (a one-stage pipeline has no first and last stage)")
        if value < 1:
            raise ConfigError(f"parallel.{name}: must be at least 1, got {value}")
    given = [v for v in (p.first_stage_layers, p.last_stage_layers) if v is not None]
    middle, rest = p.pp - len(given), n_layers - sum(given)
    name = "last_stage_layers" if p.last_stage_layers is not None else "first_stage_layers"
    if middle == 0 and rest != 0:
        raise ConfigError(f"parallel.{name}: first {p.first_stage_layers} + last {p.last_stage_layers} layers "
                          f"must add up to model.n_layers {n_layers} on pp 2")
    if rest < middle:
        raise ConfigError(f"parallel.{name}: leaves {rest} of model.n_layers {n_layers} for {middle} middle "
                          f"stages; each needs at least one")


def rank_layers(n_layers: int, p: int, first_stage_layers: int | None = None,
                last_stage_layers: int | None = None) -> list:
    """Transformer layers of each pipeline rank: the first and last as given (None = even share), the rest
    split evenly over the others (the first n % k of them take one more)."""
    counts = [None] * p
    if first_stage_layers is not None:
        counts[0] = first_stage_layers
    if last_stage_layers is not None:
        counts[-1] = last_stage_layers
    if p == 1 and (first_stage_layers, last_stage_layers) != (None, None):
        raise ValueError("first_stage_layers / last_stage_layers need at least two pipeline stages")
    free = [r for r in range(p) if counts[r] is None]
    given = [c for c in counts if c is not None]
    rest = n_layers - sum(given)
    if any(c < 0 for c in given) or rest < len(free) or (not free and rest):
        raise ValueError(f"cannot split {n_layers} layers over {p} stages with first {first_stage_layers}, "
                         f"last {last_stage_layers}")
    if free:
        base, extra = divmod(rest, len(free))
        for i, r in enumerate(free):
            counts[r] = base + (1 if i < extra else 0)
    return counts


def partition_layers(n_layers: int, p: int, v: int = 1, first_stage_layers: int | None = None,
                     last_stage_layers: int | None = None) -> list:
    """Layer ids of each virtual stage k = c p + r (a list of p v ranges, in model order).

    Each rank's layers (`rank_layers`) are dealt over its v chunks as evenly as they go; where they do not
    divide, the first rank's first chunks (which carry the embedding) and every other rank's last chunks
    (the last rank's carries the output head) are the ones a layer short. An even split with p v dividing
    n gives n / (p v) layers everywhere, and with v = 1 it is the first n % p stages one layer longer."""
    per_rank = rank_layers(n_layers, p, first_stage_layers, last_stage_layers)
    sizes = [0] * (p * v)
    for r, n in enumerate(per_rank):
        base, extra = divmod(n, v)
        for c in range(v):
            long = c >= v - extra if r == 0 else c < extra
            sizes[c * p + r] = base + (1 if long else 0)
    out, start = [], 0
    for size in sizes:
        out.append(range(start, start + size))
        start += size
    return out


def peak_in_flight(order: list, layers_per_chunk) -> float:
    """Most layers' worth of micro-batch activations a rank holds at once under this order (a micro-batch's
    are freed by its backward; under zero bubble by its W, which still needs the layers' inputs)."""
    free = "W" if any(kind == "W" for kind, _, _ in order) else "B"
    held, peak = 0.0, 0.0
    for kind, _, c in order:
        if kind == "F":
            held += layers_per_chunk[c]
        elif kind == free:
            held -= layers_per_chunk[c]
        peak = max(peak, held)
    return peak


@dataclass
class Task:
    rank: int
    kind: str       # "F" | "B" | "W"
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
    last_backward: dict = field(default_factory=dict)   # (rank, chunk) -> (start, end) of its final B (zero
                                                        # bubble: W), after which its gradients are complete
    backward_spans: dict = field(default_factory=dict)  # (rank, chunk) -> [(start, end)] of every B (W), in order
    events: int = 0

    @property
    def makespan(self) -> float:
        return max(self.compute_end) if self.compute_end else 0.0


class SharedCores:
    """Processor sharing on one CPU machine: while k tasks compute at once, each progresses at 1 / slowdown(k)
    of its speed alone (`Hardware.sharing_slowdown`), so a stage whose neighbour waits in the bubble runs
    faster than one computing beside it. A task's work is its seconds alone."""

    def __init__(self, env, slowdown):
        self.env, self.slowdown = env, slowdown
        self.active: dict = {}      # event -> work left (seconds alone)
        self.last = 0.0
        self.token = None

    def _rate(self) -> float:
        return 1.0 / self.slowdown(len(self.active)) if self.active else 0.0

    def _advance(self) -> None:
        rate, now = self._rate(), self.env.now
        for ev in self.active:
            self.active[ev] -= (now - self.last) * rate
        self.last = now

    def _schedule(self) -> None:
        if not self.active:
            return
        token = self.token = object()
        first = min(self.active.values())
        self.env.timeout(max(0.0, first) / self._rate()).callbacks.append(lambda _e: self._fire(token))

    def _fire(self, token) -> None:
        if token is not self.token:         # superseded: a task started or ended since
            return
        self._advance()
        first = min(self.active.values())
        for ev in [ev for ev, left in self.active.items() if left <= first + 1e-12]:
            del self.active[ev]
            ev.succeed()
        self._schedule()

    def run(self, work: float):
        """An event that fires when `work` seconds of compute (alone) are done."""
        self._advance()
        ev = self.env.event()
        self.active[ev] = work
        self._schedule()
        return ev


def task_seconds(schedule: str, kind: str, k: int, forward, backward, weight_grad) -> float:
    """Seconds of one task of virtual stage k: F its forward; B its whole backward, or, under zero bubble
    (where W also runs), the backward less the weight gradient W (weight_grad[k]; None: half the backward,
    as dgrad and wgrad of a matmul are equal products)."""
    if kind == "F":
        return forward[k]
    if schedule != "zero_bubble":
        return backward[k]
    w = backward[k] / 2 if weight_grad is None else weight_grad[k]
    return w if kind == "W" else backward[k] - w


def grads_ready(schedule: str) -> str:
    """The task after which a chunk's weight gradients are complete: W under zero bubble, else B."""
    return "W" if schedule == "zero_bubble" else "B"


def simulate_pipeline(schedule: str, p: int, m: int, v: int, forward, backward, p2p=0.0,
                      slow=None, record: bool = True, sharing=None, weight_grad=None) -> PipelineRun:
    """Run one step of a pipeline schedule.

    forward[k], backward[k]: seconds of virtual stage k's F and B for one micro-batch (k = chunk * p + rank);
    weight_grad[k]: the part of backward[k] that is the weight gradient (zero bubble runs it as W);
    p2p: seconds to send one activation or gradient to the next virtual stage (a number, or a list by
    sending virtual stage); slow: {rank: factor} stretches that rank's tasks (a straggler); sharing: on a CPU,
    slowdown(k) of k ranks computing at once (`SharedCores`; forward and backward are then seconds alone).
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
    cores = SharedCores(env, sharing) if sharing is not None else None

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

    ready = grads_ready(schedule)

    def rank_process(r):
        factor = slow.get(r, 1.0)
        for kind, mb, c in schedule_order(schedule, p, m, v, r):
            k = c * p + r
            if kind == "F" and k > 0:
                yield inbox("F", mb, k)
            if kind == "B" and k < n_virtual - 1:
                yield inbox("B", mb, k)
            start = env.now
            duration = task_seconds(schedule, kind, k, forward, backward, weight_grad) * factor
            yield env.timeout(duration) if cores is None or duration <= 0 else cores.run(duration)
            counter[0] += 1
            run.busy[r] += env.now - start
            if record:
                run.tasks.append(Task(r, kind, mb, c, start, env.now))
            if kind == "F" and k < n_virtual - 1:
                deliver(r, "F", mb, k, k + 1)
            elif kind == "B" and k > 0:
                deliver(r, "B", mb, k, k - 1)
            if kind == ready:
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
    """Closed form of the idle share of a step with equal stages and free communication (for tests, docs):
    forward 1, backward 2 over v chunks (zero bubble: B and W 1 each, so its (p - 1)(t_F + t_B - t_W) / v is
    p - 1 of 3 v m)."""
    if schedule == "interleaved_1f1b":
        return (p - 1) / (v * m + p - 1)
    if schedule == "zero_bubble":
        return (p - 1) / (3 * v * m + p - 1)
    return (p - 1) / (m + p - 1)
