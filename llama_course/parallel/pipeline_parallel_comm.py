"""Pipeline-parallel communication: activations forward, their gradients backward, in paired batches.

Between neighbouring stages a micro-batch crosses twice per step: its activation (b, s, h) forward and the
gradient of that activation backward, e b s h bytes each way (s/t with sequence parallelism). That is
all a pipeline sends: far less than tensor parallelism's all-reduces, which is why pipeline stages can sit
on different nodes.

**Pairing (NCCL's rule).** On NCCL a send completes only once the peer has posted the matching receive,
and a rank's operations to one peer run in order. Sent one at a time, 1F1B with p = 2, m = 4 deadlocks:
after F1 rank 0 sends F1 and only then receives B0, while rank 1, after B0, sends B0 and only then
receives F1; both sends wait forever. Megatron-LM posts each send together with the next receive
(`send_forward_recv_backward`, `send_backward_recv_forward`) in one `batch_isend_irecv`, and so does
`p2p_plan` here, derived from the same `schedule_order` the simulator runs:

    GPipe, 1F1B        the send after task t and the receive before task t+1 form one batch;
    interleaved 1F1B   in the steady state a forward and the backward after it are one unit (Megatron's
                       `send_forward_backward_recv_forward_backward`): the unit's sends go out together
                       with the next unit's receives, once both computations are done.

`rendezvous_check` plays every rank's batches under NCCL's rules (a batch completes once each peer has
posted the counterparts of its operations; messages between two ranks match in posting order) and says
whether the plan completes; tests run it over many (schedule, p, m, v), and an engine whose plan does not
complete is refused on NCCL. Each message keeps a tag naming (kind, micro-batch, receiving virtual
stage): NCCL ignores it, strict mode (core/wire.py) checks that both sides agree on it, in order.

Every batch records a span (send | recv on the comm stream) in the rank's Tracer.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from simulator import spec
from simulator.pipeline_parallel import schedule_order

# ---------------------------------------------------------------------------------------------
# the plan: which messages each batch carries (pure Python, no torch)
# ---------------------------------------------------------------------------------------------


def task_messages(kind: str, micro_batch: int, chunk: int, p: int, v: int, rank: int) -> tuple:
    """(receive before, send after) of one task as ('recv'|'send', peer pp rank, label) or None;
    label = (kind of the message, micro-batch, receiving virtual stage)."""
    k, last = chunk * p + rank, p * v - 1
    if kind == "W":                             # zero bubble's weight gradient: nobody waits for it
        return None, None
    if kind == "F":
        recv = ("recv", (k - 1) % p, ("F", micro_batch, k)) if k > 0 else None
        send = ("send", (k + 1) % p, ("F", micro_batch, k + 1)) if k < last else None
    else:
        recv = ("recv", (k + 1) % p, ("B", micro_batch, k)) if k < last else None
        send = ("send", (k - 1) % p, ("B", micro_batch, k - 1)) if k > 0 else None
    return recv, send


def units(order: list, paired: bool) -> list:
    """Task indices grouped into units whose messages move together: single tasks, or (with `paired`, the
    interleaved schedule) each steady-state forward with the backward after it."""
    n_forward = sum(kind == "F" for kind, _, _ in order)
    lead = next((j for j, (kind, _, _) in enumerate(order) if kind == "B"), len(order))
    if not paired or lead >= n_forward:         # no steady state: every forward runs before any backward
        return [[j] for j in range(len(order))]
    warm = lead - 1                             # warm-up forwards, then (F, B) pairs, then the cool-down
    out = [[j] for j in range(warm)]
    j = warm
    while j + 1 < len(order) and order[j][0] == "F" and order[j + 1][0] == "B":
        out.append([j, j + 1])
        j += 2
    return out + [[i] for i in range(j, len(order))]


def p2p_plan(order: list, p: int, v: int, rank: int, paired: bool = False) -> list:
    """plan[t]: the messages to post in one batch before task t of `order`; plan[len(order)]: the last
    batch (sends of the final task). Each message ('send'|'recv', peer pp rank, label)."""
    plan = [[] for _ in range(len(order) + 1)]
    pending: list = []
    for unit in units(order, paired):
        recvs, sends = [], []
        for j in unit:
            recv, send = task_messages(*order[j], p, v, rank)
            recvs += [recv] if recv else []
            sends += [send] if send else []
        plan[unit[0]] = pending + recvs
        pending = sends
    plan[len(order)] = pending
    return plan


def schedule_plan(schedule: str, p: int, m: int, v: int, rank: int) -> list:
    """`p2p_plan` of this rank's `schedule_order` (paired units for the interleaved schedule)."""
    order = schedule_order(schedule, p, m, v, rank)
    return p2p_plan(order, p, v, rank, paired=schedule == "interleaved_1f1b" and v > 1)


def rendezvous_check(plans: list) -> str | None:
    """Play every rank's batches (plans[rank] as from p2p_plan) under NCCL's rules; None when all complete,
    else one line saying where it deadlocks or which messages would be swapped."""
    p = len(plans)
    batches = [[b for b in plan if b] for plan in plans]
    posted: dict = {}                                   # (src, dst, direction) -> labels in posting order
    position, current = [0] * p, [None] * p

    def post(r):
        current[r] = []
        for direction, peer, label in batches[r][position[r]]:
            queue = posted.setdefault((r, peer, direction), [])
            queue.append(label)
            current[r].append((direction, peer, label, len(queue) - 1))

    for r in range(p):
        if batches[r]:
            post(r)
    moved = True
    while moved:
        moved = False
        for r in range(p):
            if position[r] >= len(batches[r]):
                continue
            ready = True
            for direction, peer, label, index in current[r]:
                theirs = posted.get((peer, r, "recv" if direction == "send" else "send"), [])
                if len(theirs) <= index:
                    ready = False
                    break
                if theirs[index] != label:
                    return f"rank {r}'s {direction} {label} meets rank {peer}'s {theirs[index]}: messages swapped"
            if ready:
                position[r] += 1
                moved = True
                if position[r] < len(batches[r]):
                    post(r)
    stuck = [r for r in range(p) if position[r] < len(batches[r])]
    if stuck:
        return "deadlock: " + "; ".join(f"rank {r} waits in batch {position[r]} {batches[r][position[r]]}"
                                        for r in stuck)
    return None


# ---------------------------------------------------------------------------------------------
# the runtime side
# ---------------------------------------------------------------------------------------------


class PipelineComm:
    """One rank's batches to its pipeline neighbours over ctx.pp_group (global ranks computed here).

    The engine calls, for each task t of the schedule: `exchange(plan[t])` (sends the activations or
    gradients queued with `queue_send`, receives the task's input), compute, `queue_send(label, tensor)`;
    and `exchange(plan[-1])` at the end of the step. Received tensors are taken with `take(label)`."""

    def __init__(self, ctx, tracer, n_virtual: int):
        self.ctx, self.tracer, self.n_virtual = ctx, tracer, n_virtual
        self.outbox: dict = {}
        self.inbox: dict = {}
        self.recv_wait = 0.0

    def global_rank(self, pp_rank: int) -> int:
        c = self.ctx
        return spec.rank_of(pp_rank, c.dp_rank, c.tp_rank, c.dp, c.tp)

    def tag(self, label: tuple) -> int:
        """Unique per message of a step: (kind, micro-batch, receiving virtual stage)."""
        kind, micro_batch, stage = label
        return (micro_batch * self.n_virtual + stage) * 2 + (kind == "B")

    def queue_send(self, label: tuple, tensor: torch.Tensor, dtype: torch.dtype) -> None:
        """Hold `tensor` (cast to the wire dtype) until the batch that sends it."""
        self.outbox[label] = tensor.detach().to(dtype).contiguous()

    def exchange(self, messages: list, shape, dtype: torch.dtype) -> None:
        """Post one batch: every send and receive of `messages` together; wait for all of them."""
        if not messages:
            return
        ops, spans = [], []
        for direction, peer, label in messages:
            if direction == "send":
                ops.append(dist.P2POp(dist.isend, self.outbox.pop(label), self.global_rank(peer),
                                      self.ctx.pp_group, self.tag(label)))
            else:
                buf = torch.empty(shape, dtype=dtype, device=self.ctx.device)
                self.inbox[label] = buf
                ops.append(dist.P2POp(dist.irecv, buf, self.global_rank(peer), self.ctx.pp_group, self.tag(label)))
            spans.append(direction)
        name = "recv" if "recv" in spans else "send"
        _, micro_batch, stage = messages[-1][2]
        start = time.perf_counter()
        with self.tracer.span(name, "comm", micro_batch=micro_batch, stage=stage):
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        if name == "recv":
            self.recv_wait += time.perf_counter() - start

    def take(self, label: tuple) -> torch.Tensor:
        """The tensor received for `label` (posted by an earlier exchange)."""
        return self.inbox.pop(label)
