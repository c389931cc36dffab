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
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llama_course.core.model import cross_entropy
from llama_course.engine import ENGINES, Engine
from llama_course.parallel.activation_checkpointing import apply_activation_checkpointing
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
from llama_course.parallel.tensor_parallel import (
    gather_full_state,
    model_parallel_grad_norm,
    shard_dim,
    shard_model,
    vocab_parallel_cross_entropy,
)
from llama_course.parallel.tensor_parallel_comm import all_reduce_gradients, enter_region, split_to_sp
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


def build_stages(cfg, ctx, model: nn.Module) -> PipelineRank:
    """This rank's chunks of a full model (tensor-parallel shards of it first when tp > 1)."""
    p, v = ctx.pp, cfg.parallel.vpp
    if ctx.tp > 1 and cfg.parallel.implementation == "course":
        model = shard_model(model, ctx.tp_group, cfg.parallel.sequence_parallel)
    parts = stage_layers(cfg)
    chunks = []
    for c in range(v):
        k = c * p + ctx.pp_rank
        chunk = StageModule(model, parts[k], first=k == 0, last=k == p * v - 1)
        apply_activation_checkpointing(chunk.layers, cfg.parallel.activation_checkpointing)
        chunks.append(chunk)
    return PipelineRank(chunks)


def full_name(name: str) -> str:
    """'chunks.1.layers.5.attention.wq.weight' -> 'layers.5.attention.wq.weight'."""
    return name.split(".", 2)[2] if name.startswith("chunks.") else name


# ---------------------------------------------------------------------------------------------
# the course's engine: schedules on send/recv
# ---------------------------------------------------------------------------------------------

class PipelineEngine(Engine):
    """implementation: course. Runs `schedule_order` task by task; tp > 1 and dp > 1 compose (parallel_3d)."""

    name = "pipeline_parallel"
    compute_delay: tuple = (0.0, 0.0)
    """Seconds of sleep per layer in each forward and backward (benchmarks: a noise-free compute stand-in)."""

    def __init__(self, cfg, ctx, model, tracer=None):
        # the capability table refuses tied embeddings (an embedding and a head on different stages) and fp16
        self.v = cfg.parallel.vpp
        self.schedule = cfg.parallel.schedule
        super().__init__(cfg, ctx, build_stages(cfg, ctx, model), tracer)
        self.comm = PipelineComm(ctx, self.tracer, ctx.pp * self.v)
        self._plans: dict = {}
        if ctx.backend == "nccl" and cfg.parallel.implementation == "course":
            m = cfg.grad_accum_steps
            trouble = rendezvous_check([schedule_plan(self.schedule, ctx.pp, m, self.v, r) for r in range(ctx.pp)])
            if trouble:
                raise ConfigError(f"parallel.schedule: {self.schedule} with pp {ctx.pp}, vpp {self.v} and {m} "
                                  f"micro-batches cannot pair its sends on NCCL ({trouble.split(':')[0]}); use "
                                  "parallel.implementation=torch or another schedule")
        if cfg.load_balance.policy == "balanced_stages" and ctx.rank == 0:
            r = balance_report(cfg)
            print(f"balanced_stages: naive {r['naive']} slowest {r['naive_slowest']:.3g} FLOP/token, "
                  f"balanced {r['balanced']} slowest {r['balanced_slowest']:.3g} ({r['speedup']:.2f}x)", flush=True)

    # ---- one step ---------------------------------------------------------------------------------
    def activation_shape(self, x: torch.Tensor) -> tuple:
        b, s = x.shape
        if self.cfg.parallel.sequence_parallel and self.ctx.tp > 1:
            s //= self.ctx.tp
        return (b, s, self.cfg.model.dim)

    def autocast(self):
        from contextlib import nullcontext

        dtype = self.autocast_dtype
        return torch.autocast(self.ctx.device.type, dtype=dtype) if dtype else nullcontext()

    def delay(self, chunk: StageModule, backward: bool) -> None:
        per_layer = self.compute_delay[1 if backward else 0]
        if per_layer:
            time.sleep(per_layer * len(chunk.layers))

    def forward_backward(self, micro_batches: list) -> float:
        p, r, v, m = self.ctx.pp, self.ctx.pp_rank, self.v, len(micro_batches)
        last_stage = p * v - 1
        chunks = self.base_model.chunks
        dev = self.ctx.device
        micro_batches = [(x.to(dev), y.to(dev)) for x, y in micro_batches]
        shape = self.activation_shape(micro_batches[0][0])
        dtype = next(self.base_model.parameters()).dtype
        inputs, outputs, losses = {}, {}, []
        if self.tracer.enabled and p > 1:
            dist.barrier(group=self.ctx.pp_group)
        step_start = time.perf_counter()
        n_events = len(self.tracer.events)
        order = schedule_order(self.schedule, p, m, v, r)
        plan = self.comm_plan(m)                      # sends paired with receives (NCCL's rule)
        for t, (kind, i, c) in enumerate(order):
            k = c * p + r
            x, y = micro_batches[i]
            self.comm.exchange(plan[t], shape, dtype)
            if kind == "F":
                if k > 0:
                    x = self.comm.take(("F", i, k)).requires_grad_()
                    inputs[(i, c)] = x
                start = time.perf_counter()
                with self.tracer.span("forward", "compute", micro_batch=i, chunk=c), self.autocast():
                    out = chunks[c](x)
                    if k == last_stage:
                        loss = chunks[c].loss(out, y)
                        losses.append(loss.detach().float())
                        out = loss / m
                    self.delay(chunks[c], False)
                self.stretch(time.perf_counter() - start)
                if k < last_stage:
                    self.comm.queue_send(("F", i, k + 1), out, dtype)
                outputs[(i, c)] = out
            else:
                out = outputs.pop((i, c))
                grad = None if k == last_stage else self.comm.take(("B", i, k))
                start = time.perf_counter()
                with self.tracer.span("backward", "compute", micro_batch=i, chunk=c):
                    torch.autograd.backward(out, grad)
                    self.delay(chunks[c], True)
                self.stretch(time.perf_counter() - start)
                if k > 0:
                    self.comm.queue_send(("B", i, k - 1), inputs.pop((i, c)).grad, dtype)
        self.comm.exchange(plan[-1], shape, dtype)
        self.record_bubbles(step_start, n_events)
        total = torch.stack(losses).sum() if losses else torch.zeros((), device=dev)
        if p > 1:
            dist.all_reduce(total, group=self.ctx.pp_group)        # only the last stage adds non-zero
        return float(total) / m

    def comm_plan(self, m: int) -> list:
        """This rank's batches for a step of m micro-batches (pipeline_parallel_comm.p2p_plan), cached."""
        if m not in self._plans:
            p, v = self.ctx.pp, self.v
            self._plans[m] = schedule_plan(self.schedule, p, m, v, self.ctx.pp_rank)
        return self._plans[m]

    def record_bubbles(self, step_start: float, first_event: int) -> None:
        """Idle gaps between this rank's compute spans, from the step's start, as `bubble` spans."""
        if not self.tracer.enabled:
            return
        origin = self.tracer.origin
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in self.tracer.events[first_event:]
                       if e["tid"] == "compute")
        t = (step_start - origin) * 1e6
        for begin, end in spans:
            if begin > t:
                self.tracer.add("bubble", "bubble", origin + t / 1e6, (begin - t) / 1e6)
            t = max(t, end)

    # ---- gradients, norms, state ------------------------------------------------------------------
    def reduce_gradients(self) -> None:
        params = list(self.base_model.parameters())
        if self.cfg.parallel.sequence_parallel and self.ctx.tp > 1:
            all_reduce_gradients([q for q in params if getattr(q, "sequence_parallel", False)],
                                 self.ctx.tp_group, average=False)
        if self.ctx.dp > 1:
            all_reduce_gradients(params, self.ctx.dp_group)

    def grad_norm(self):
        return model_parallel_grad_norm(self.base_model, self.ctx, lambda n, q: shard_dim(full_name(n)) is not None
                                        and self.ctx.tp > 1)

    @torch.no_grad()
    def evaluate(self, batches: list) -> float:
        """Forward only, one batch at a time through the virtual stages; the last stage's loss is shared."""
        p, r, v = self.ctx.pp, self.ctx.pp_rank, self.v
        chunks, dev = self.base_model.chunks, self.ctx.device
        total = torch.zeros((), device=dev)
        self.base_model.eval()
        try:
            order = [("F", i, c) for i in range(len(batches)) for c in range(v)]
            plan = p2p_plan(order, p, v, r)
            dtype = next(self.base_model.parameters()).dtype
            for t, (_, i, c) in enumerate(order):
                x, y = batches[i]
                k = c * p + r
                self.comm.exchange(plan[t], self.activation_shape(x), dtype)
                h = self.comm.take(("F", i, k)) if k > 0 else x.to(dev)
                h = chunks[c](h)
                if k == p * v - 1:
                    loss = chunks[c].loss(h, y.to(dev))
                    total += (loss.full_tensor() if hasattr(loss, "full_tensor") else loss).float()
                else:
                    self.comm.queue_send(("F", i, k + 1), h, dtype)
            self.comm.exchange(plan[-1], None, dtype)
        finally:
            self.base_model.train()
        if p > 1:
            dist.all_reduce(total, group=self.ctx.pp_group)
        return float(total) / max(len(batches), 1)

    def full_model_state(self) -> dict | None:
        return gather_full_state(self.ctx, {full_name(n): t for n, t in self.base_model.state_dict().items()})

    def full_gradients(self) -> dict | None:
        """Every parameter's gradient under its full-model name, whole, on rank 0 (tests)."""
        return gather_full_state(self.ctx, {full_name(n): q.grad for n, q in self.base_model.named_parameters()
                                            if q.grad is not None})


# ---------------------------------------------------------------------------------------------
# the oracle: torch.distributed.pipelining
# ---------------------------------------------------------------------------------------------

class TorchPipelineEngine(PipelineEngine):
    """implementation: torch. Manual `PipelineStage`s of the same StageModules, and torch's
    ScheduleGPipe / Schedule1F1B / ScheduleInterleaved1F1B (which divide gradients by m themselves)."""

    name = "torch_pipeline"

    def __init__(self, cfg, ctx, model, tracer=None):
        from llama_course.core.distributed import device_mesh

        if ctx.tp > 1:
            from llama_course.parallel.tensor_parallel import parallelize_torch

            parallelize_torch(model, device_mesh(ctx)["tp"], cfg.parallel.sequence_parallel)
        super().__init__(cfg, ctx, model, tracer)
        self._schedule = None

    def evaluate(self, batches: list) -> float:
        if self.ctx.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            with loss_parallel():                  # the head's logits are a DTensor sharded over the vocabulary
                return super().evaluate(batches)
        return super().evaluate(batches)

    def make_schedule(self, m: int):
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
        )

        p, v = self.ctx.pp, self.v
        stages = [PipelineStage(chunk, c * p + self.ctx.pp_rank, p * v, self.ctx.device, group=self.ctx.pp_group)
                  for c, chunk in enumerate(self.base_model.chunks)]
        loss_fn = lambda logits, y: F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        if self.schedule == "interleaved_1f1b" and v > 1:
            return ScheduleInterleaved1F1B(stages, m, loss_fn=loss_fn)
        cls = ScheduleGPipe if self.schedule == "gpipe" else Schedule1F1B
        return cls(stages[0], m, loss_fn=loss_fn)

    def forward_backward(self, micro_batches: list) -> float:
        from contextlib import nullcontext

        m, dev = len(micro_batches), self.ctx.device
        if self._schedule is None:
            self._schedule = self.make_schedule(m)
        x = torch.cat([b[0] for b in micro_batches]).to(dev)
        y = torch.cat([b[1] for b in micro_batches]).to(dev)
        losses: list = []
        holds_first = self.ctx.pp_rank == 0
        holds_last = self.ctx.pp_rank == self.ctx.pp - 1
        parallel_loss = nullcontext()
        if self.ctx.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            parallel_loss = loss_parallel()
        with parallel_loss, self.tracer.span("forward_backward", "compute"):
            args = (x,) if holds_first else ()
            if holds_last:
                self._schedule.step(*args, target=y, losses=losses)
            else:
                self._schedule.step(*args)
        total = torch.stack([x.detach().float() for x in losses]).sum() if losses else torch.zeros((), device=dev)
        if hasattr(total, "full_tensor"):
            total = total.full_tensor()
        if self.ctx.pp > 1:
            dist.all_reduce(total, group=self.ctx.pp_group)
        return float(total) / m


ENGINES["pipeline_parallel"] = PipelineEngine
ENGINES["torch_pipeline"] = TorchPipelineEngine
