"""Pipeline parallelism: the layer stack cut into stages, micro-batches flowing through them.

The l layers are cut into p stages (pp ranks); the embedding joins the first stage, the final norm, head
and loss the last. The global batch is cut into m micro-batches; stage r runs forward F(i) of micro-batch
i once stage r-1 has sent its activation, and backward B(i) once stage r+1 has sent the gradient:

    GPipe (p=4, m=4)                                   1F1B: same bubble, at most p micro-batches in flight
    r0 F0 F1 F2 F3 .  .  .  .  .  .  B3 B2 B1 B0       r0 F0 F1 F2 F3 .  .  .  B0 .  B1 .  B2 .  B3
    r1 .  F0 F1 F2 F3 .  .  .  .  B3 B2 B1 B0 .        r1 .  F0 F1 F2 .  .  B0 F3 B1 .  B2 .  B3 .
    r2 .  .  F0 F1 F2 F3 .  .  B3 B2 B1 B0 .  .        r2 .  .  F0 F1 .  B0 F2 B1 F3 B2 .  B3 .  .
    r3 .  .  .  F0 F1 F2 F3 B3 B2 B1 B0 .  .  .        r3 .  .  .  F0 B0 F1 B1 F2 B2 F3 B3 .  .  .

Cost with equal stages (t_f, t_b per micro-batch and stage): the step takes (m + p - 1)(t_f + t_b), of which
each rank idles (p - 1)(t_f + t_b): the bubble fraction (p-1)/(m+p-1). GPipe stores m micro-batches of
activations per stage, 1F1B at most p. Interleaved 1F1B (`vpp` = v chunks per rank, virtual stage
k = c p + r) cuts the bubble to (p-1)/(v m + p-1) for v times more sends. Communication: e b s h bytes
per micro-batch and stage boundary, each way (pipeline_parallel_comm.py).

Zero bubble (`schedule: zero_bubble`, ZB-H1, Qi et al. 2023; one chunk per rank) splits each backward into
B, the input gradient the previous stage waits for, and W, the weight gradients nobody waits for (the
linear layers' dW = dy^T x, deferred by core/weight_grad.py), and runs W where 1F1B idles (p = 4, m = 4,
F 1 unit, 1F1B's backward 2, B and W 1 each: 21 units become 15):

    r0 F0 F1 F2 F3 .  .  .  B0 W0 B1 W1 B2 W2 B3 W3       the bubble (p-1)(t_f + t_b) of 1F1B becomes
    r1 .  F0 F1 F2 .  .  B0 F3 B1 W0 B2 W1 B3 W2 W3       (p-1)(t_f + t_B - t_W), t_B + t_W = t_b;
    r2 .  .  F0 F1 .  B0 F2 B1 F3 B2 W0 B3 W1 W2 W3       activations live until W: still at most
    r3 .  .  .  F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2 W3       p micro-batches in flight

In the engine (engine.py) the cut is a model transform (`PipelineSplit`, after tensor parallelism and
activation checkpointing have changed the blocks) and the order of work a schedule (`PipelineSchedule`,
or `TorchPipelineSchedule` on torch.distributed.pipelining); the data-parallel gradient sync (ZeRO-1/2
included, as Megatron-LM runs it) reduces each stage's gradients over its dp group after the schedule.

The task order of every schedule comes from `simulator.pipeline_parallel.schedule_order`, the same
function the simulator runs, so a measured trace and a simulated one are the same program.

Balanced stages (`load_balance.policy: balanced_stages`): `partition_stages(costs, p)` (balanced_stages.py) picks contiguous
stages minimising the slowest one (the embedding costs little, the head 2 V h per token: on small models
the last stage is the straggler of an equal-layer split); `balance_report` puts both side by side.

Seed questions 9 and 21: pipelining is the model parallelism that crosses nodes (it only sends
activations), paid for with the bubble; choose m >= 4 p or interleave.

    llama-course train configs/tiny.yaml --set parallel.pp=2 cluster.num_gpus=2 --trace runs/pp2.json
    llama-course train configs/tiny.yaml --set parallel.pp=2 parallel.vpp=2 parallel.schedule=interleaved_1f1b
    llama-course train configs/tiny.yaml --set parallel.pp=2 parallel.implementation=torch
    llama-course train configs/tiny.yaml --set parallel.pp=2 parallel.schedule=zero_bubble
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
)

from llama_course.core.engine_protocol import ModelTransform, Schedule
from llama_course.core.model import cross_entropy
from llama_course.core.weight_grad import WeightGradStore
from llama_course.parallel.balanced_stages import (  # noqa: F401  (re-exported: the stage partition is part of the concept)
    balance_report,
    naive_partition,
    partition_stages,
    stage_layers,
)
from llama_course.parallel.pipeline_parallel_comm import (
    PipelineComm,
    p2p_plan,
    rendezvous_check,
    schedule_plan,
)
from llama_course.parallel.tensor_parallel import vocab_parallel_cross_entropy
from llama_course.parallel.tensor_parallel_comm import enter_region, split_to_sp
from simulator.config import ConfigError
from simulator.pipeline_parallel import schedule_order

# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------

class StageModule(nn.Module):
    """One virtual stage: [tok_embeddings] -> its layers -> [norm -> output]. Names are the full model's
    (layers is a ModuleDict keyed by the global layer id), so checkpoints and gradients map back."""

    def __init__(self, model: nn.Module, layer_ids: list, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.group = getattr(model, "group", None)
        self.sequence_parallel = getattr(model, "sequence_parallel", False)
        self.tok_embeddings = model.tok_embeddings if first else None
        self.pos_embeddings = model.pos_embeddings if first else None
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.output = model.output if last else None
        self.vocab_start = getattr(model, "vocab_start", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            tokens = x
            x = self.tok_embeddings(tokens)
            if self.pos_embeddings is not None:
                pos = self.pos_embeddings(torch.arange(tokens.shape[1], device=tokens.device)).unsqueeze(0)
                x = x + (split_to_sp(pos, self.group) if self.sequence_parallel else pos)
        for layer in self.layers.values():
            x = layer(x)
        if self.last:
            h = self.norm(x)
            x = self.output(enter_region(h, self.group, self.sequence_parallel) if self.group else h)
        return x

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.group is not None and not hasattr(logits, "placements"):
            return vocab_parallel_cross_entropy(logits, targets, self.vocab_start, self.group)
        return cross_entropy(logits, targets)


class PipelineRank(nn.Module):
    """The v chunks one rank holds (chunk c is virtual stage c p + r)."""

    def __init__(self, chunks: list):
        super().__init__()
        self.chunks = nn.ModuleList(chunks)


class PipelineSplit(ModelTransform):
    """The model transform: this rank's chunks of the model (tensor-parallel shards of it when a
    TensorParallel transform ran first). Names map back to the full model's (`full_name`)."""

    name = "pipeline_parallel"

    def __init__(self, cfg, ctx):
        # the capability table refuses tied embeddings here (an embedding and a head on different stages)
        self.cfg, self.ctx = cfg, ctx

    def apply(self, model: nn.Module) -> nn.Module:
        p, v, r = self.ctx.pp, self.cfg.parallel.vpp, self.ctx.pp_rank
        parts = stage_layers(self.cfg)
        return PipelineRank([StageModule(model, parts[c * p + r], first=c * p + r == 0, last=c * p + r == p * v - 1)
                             for c in range(v)])

    def full_name(self, name: str) -> str:
        return full_name(name)

    def gather_full(self, ctx, named: dict) -> dict:
        """Every stage's tensors to rank 0 (each stage's dp 0, tp 0 rank sends; a collective)."""
        parts = [None] * ctx.world_size if ctx.rank == 0 else None
        mine = {n: t.detach().cpu() for n, t in named.items()} if ctx.dp_rank == 0 and ctx.tp_rank == 0 else {}
        dist.gather_object(mine, parts, dst=0)
        return {n: t for part in parts for n, t in part.items()} if ctx.rank == 0 else {}


def full_name(name: str) -> str:
    """'chunks.1.layers.5.attention.wq.weight' -> 'layers.5.attention.wq.weight'."""
    return name.split(".", 2)[2] if name.startswith("chunks.") else name


# ---------------------------------------------------------------------------------------------
# the course's schedule: task by task, each task's messages paired in one batch
# ---------------------------------------------------------------------------------------------

@dataclass
class _Step:
    """What one step's tasks share on this rank: the micro-batches, the activations in flight (inputs
    received, outputs kept for their backward), the loss so far, zero bubble's weight-gradient store."""

    engine: object
    micro_batches: list
    weights: list
    dtype: torch.dtype
    last_stage: int
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    store: WeightGradStore = field(default_factory=WeightGradStore)
    total: torch.Tensor = None

    def __post_init__(self):
        self.split = self.engine.cfg.parallel.schedule == "zero_bubble"
        self.total = torch.zeros((), dtype=torch.float64, device=self.engine.ctx.device)


class PipelineSchedule(Schedule):
    """implementation: course. Runs `schedule_order` task by task on this rank's chunks; before each task
    one batch posts the sends queued by earlier tasks together with this task's receive
    (pipeline_parallel_comm.p2p_plan: Megatron's send_forward_recv_backward pairing, which NCCL needs)."""

    compute_delay: tuple = (0.0, 0.0)
    """Seconds of sleep per layer in each forward and backward (benchmarks: a noise-free compute stand-in)."""

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.name, self.v = cfg.parallel.schedule, cfg.parallel.vpp

    def attach(self, engine) -> None:
        ctx = self.ctx
        self.comm = PipelineComm(ctx, engine.tracer, ctx.pp * self.v)
        self._plans: dict = {}
        if ctx.backend == "nccl" and self.cfg.parallel.implementation == "course":
            m = self.cfg.grad_accum_steps
            trouble = rendezvous_check([schedule_plan(self.name, ctx.pp, m, self.v, r) for r in range(ctx.pp)])
            if trouble:
                raise ConfigError(f"parallel.schedule: {self.name} with pp {ctx.pp}, vpp {self.v} and {m} "
                                  f"micro-batches cannot pair its sends on NCCL ({trouble.split(':')[0]}); use "
                                  "parallel.implementation=torch or another schedule")
        if self.cfg.load_balance.policy == "balanced_stages" and ctx.rank == 0:
            r = balance_report(self.cfg)
            print(f"balanced_stages: naive {r['naive']} slowest {r['naive_slowest']:.3g} FLOP/token, "
                  f"balanced {r['balanced']} slowest {r['balanced_slowest']:.3g} ({r['speedup']:.2f}x)", flush=True)

    def activation_shape(self, x: torch.Tensor) -> tuple:
        b, s = x.shape
        if self.cfg.parallel.sequence_parallel and self.ctx.tp > 1:
            s //= self.ctx.tp
        return (b, s, self.cfg.model.dim)

    def delay(self, chunk: StageModule, backward: bool, share: float = 1.0) -> None:
        """Sleep compute_delay per layer (share: zero bubble's B and W each take half the backward's)."""
        per_layer = self.compute_delay[1 if backward else 0] * share
        if per_layer:
            time.sleep(per_layer * len(chunk.layers))

    def forward_backward(self, engine, micro_batches: list, weights: list) -> float:
        ctx, tracer = self.ctx, engine.tracer
        p, r, v, m = ctx.pp, ctx.pp_rank, self.v, len(micro_batches)
        micro_batches = [(x.to(ctx.device), y.to(ctx.device)) for x, y in micro_batches]
        shape = self.activation_shape(micro_batches[0][0])
        dtype = next(engine.base_model.parameters()).dtype  # activations and gradients cross in it (fp32)
        step = _Step(engine, micro_batches, weights, dtype, p * v - 1)
        if tracer.enabled and p > 1:
            dist.barrier(group=ctx.pp_group)
        step_start = time.perf_counter()
        n_events = len(tracer.events)
        plan = self.comm_plan(m)                      # sends paired with receives (NCCL's rule)
        with step.store.active() if step.split else nullcontext():
            for t, (kind, i, c) in enumerate(schedule_order(self.name, p, m, v, r)):
                self.comm.exchange(plan[t], shape, dtype)
                task = self.forward if kind == "F" else self.backward if kind == "B" else self.backward_weight
                task(step, i, c, c * p + r)
        step.store.check_empty()                      # a B whose W never ran raises, naming it
        self.comm.exchange(plan[-1], shape, dtype)
        if p > 1:   # only the last stage adds non-zero; it returns when every stage is done (the cooldown)
            dist.all_reduce(step.total, group=ctx.pp_group)
        self.record_bubbles(tracer, step_start, n_events, time.perf_counter())
        return float(step.total)

    def forward(self, step: _Step, i: int, c: int, k: int) -> None:
        """F: micro-batch i through chunk c (virtual stage k); its output queued for the next stage."""
        engine, chunk = step.engine, step.engine.base_model.chunks[c]
        x, y = step.micro_batches[i]
        if k > 0:
            x = self.comm.take(("F", i, k)).requires_grad_()
            step.inputs[(i, c)] = x
        start = time.perf_counter()
        with engine.tracer.span("forward", "compute", micro_batch=i, chunk=c):
            with engine.precision.autocast():
                out = chunk(x)
            if k == step.last_stage:
                loss = chunk.loss(out, y)
                step.total += step.weights[i] * loss.detach().double()
                out = engine.precision.scale(loss * step.weights[i])
            else:
                out = out.to(step.dtype)              # stages exchange activations in the weights' dtype
            self.delay(chunk, False)
        engine.plan.stretch(engine, time.perf_counter() - start)
        if k < step.last_stage:
            self.comm.queue_send(("F", i, k + 1), out, step.dtype)
        step.outputs[(i, c)] = out

    def backward(self, step: _Step, i: int, c: int, k: int) -> None:
        """B: the backward of micro-batch i through chunk c; its input's gradient queued for the stage before
        (zero bubble: the linear layers' weight gradients are stored for W, not computed)."""
        engine = step.engine
        out = step.outputs.pop((i, c))
        grad = None if k == step.last_stage else self.comm.take(("B", i, k))
        start = time.perf_counter()
        with engine.tracer.span("backward", "compute", micro_batch=i, chunk=c):
            with step.store.deferring((i, c)) if step.split else nullcontext():
                torch.autograd.backward(out, grad)
            self.delay(engine.base_model.chunks[c], True, 0.5 if step.split else 1.0)
        engine.plan.stretch(engine, time.perf_counter() - start)
        if k > 0:
            self.comm.queue_send(("B", i, k - 1), step.inputs.pop((i, c)).grad, step.dtype)

    def backward_weight(self, step: _Step, i: int, c: int, k: int) -> None:
        """W (zero bubble): the weight gradients micro-batch i's B stored for chunk c; nothing crosses."""
        engine = step.engine
        start = time.perf_counter()
        matmuls = len(step.store.pending.get((i, c), ()))
        with engine.tracer.span("backward_weight", "compute", micro_batch=i, chunk=c, matmuls=matmuls):
            step.store.flush((i, c))
            self.delay(engine.base_model.chunks[c], True, 0.5)
        engine.plan.stretch(engine, time.perf_counter() - start)

    def comm_plan(self, m: int) -> list:
        """This rank's batches for a step of m micro-batches (pipeline_parallel_comm.p2p_plan), cached."""
        if m not in self._plans:
            self._plans[m] = schedule_plan(self.name, self.ctx.pp, m, self.v, self.ctx.pp_rank)
        return self._plans[m]

    def record_bubbles(self, tracer, step_start: float, first_event: int, step_end: float) -> None:
        """Idle gaps between this rank's compute spans, from the step's start to its end (when every stage
        is done: a stage that finishes early waits out the others' cooldown), as `bubble` spans."""
        if not tracer.enabled:
            return
        origin = tracer.origin
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in tracer.events[first_event:] if e["tid"] == "compute")
        t = (step_start - origin) * 1e6
        for begin, end in spans + [((step_end - origin) * 1e6,) * 2]:
            if begin > t:
                tracer.add("bubble", "bubble", origin + t / 1e6, (begin - t) / 1e6)
            t = max(t, end)

    @torch.no_grad()
    def evaluate(self, engine, batches: list) -> float:
        """Forward only, one batch at a time through the virtual stages; the last stage's loss is shared."""
        ctx = self.ctx
        p, r, v = ctx.pp, ctx.pp_rank, self.v
        chunks = engine.base_model.chunks
        total = torch.zeros((), device=ctx.device)
        engine.base_model.eval()
        try:
            order = [("F", i, c) for i in range(len(batches)) for c in range(v)]
            plan = p2p_plan(order, p, v, r)
            dtype = next(engine.base_model.parameters()).dtype
            for t, (_, i, c) in enumerate(order):
                x, y = batches[i]
                k = c * p + r
                self.comm.exchange(plan[t], self.activation_shape(x), dtype)
                h = self.comm.take(("F", i, k)) if k > 0 else x.to(ctx.device)
                with engine.precision.autocast():
                    h = chunks[c](h)
                if k == p * v - 1:
                    loss = chunks[c].loss(h, y.to(ctx.device))
                    total += (loss.full_tensor() if hasattr(loss, "full_tensor") else loss).float()
                else:
                    self.comm.queue_send(("F", i, k + 1), h, dtype)
            self.comm.exchange(plan[-1], None, dtype)
        finally:
            engine.base_model.train()
        if p > 1:
            dist.all_reduce(total, group=ctx.pp_group)
        return float(total) / max(len(batches), 1)


# ---------------------------------------------------------------------------------------------
# the oracle: torch.distributed.pipelining
# ---------------------------------------------------------------------------------------------

class TorchPipelineSchedule(PipelineSchedule):
    """implementation: torch. Manual `PipelineStage`s of the same StageModules, and torch's
    ScheduleGPipe / Schedule1F1B / ScheduleInterleaved1F1B / ScheduleInterleavedZeroBubble (which divide
    gradients by m themselves, so every micro-batch weighs 1/m: load-balanced weights are refused by
    engine.py)."""

    def attach(self, engine) -> None:
        super().attach(engine)
        self.engine, self._schedule = engine, None

    def make_schedule(self, m: int):
        p, v, ctx = self.ctx.pp, self.v, self.ctx
        stages = [PipelineStage(chunk, c * p + ctx.pp_rank, p * v, ctx.device, group=ctx.pp_group)
                  for c, chunk in enumerate(self.engine.base_model.chunks)]
        precision = self.engine.precision
        loss_fn = lambda logits, y: precision.scale(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()))  # noqa: E731
        if self.name == "interleaved_1f1b" and v > 1:
            return ScheduleInterleaved1F1B(stages, m, loss_fn=loss_fn)
        if self.name == "zero_bubble":               # one stage per rank: ZB-H1, schedule_order's order
            return ScheduleInterleavedZeroBubble(stages, m, loss_fn=loss_fn)
        cls = ScheduleGPipe if self.name == "gpipe" else Schedule1F1B
        return cls(stages[0], m, loss_fn=loss_fn)

    def forward_backward(self, engine, micro_batches: list, weights: list) -> float:
        m, dev, ctx = len(micro_batches), self.ctx.device, self.ctx
        if self._schedule is None:
            self._schedule = self.make_schedule(m)
        x = torch.cat([b[0] for b in micro_batches]).to(dev)
        y = torch.cat([b[1] for b in micro_batches]).to(dev)
        losses: list = []
        with engine.tracer.span("forward_backward", "compute"), engine.precision.autocast():
            args = (x,) if ctx.pp_rank == 0 else ()
            if ctx.pp_rank == ctx.pp - 1:
                self._schedule.step(*args, target=y, losses=losses)
            else:
                self._schedule.step(*args)
        total = torch.stack([t.detach().float() for t in losses]).sum() if losses else torch.zeros((), device=dev)
        if hasattr(total, "full_tensor"):
            total = total.full_tensor()
        total = total / (engine.precision.scaler.scale if engine.precision.scaler else 1.0)
        if ctx.pp > 1:
            dist.all_reduce(total, group=ctx.pp_group)
        return float(total) / m
