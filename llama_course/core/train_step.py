"""The training step, whatever the layout: forward, backward, gradient sync, unscale, clip, optimizer step.

An `Engine` owns this rank's part of the model and its optimizer, built from the pieces of
engine_protocol.py (model transforms, a schedule, a gradient sync, a batch plan); engine.py chooses
them from the config. The trainer hands it the rank's micro-batches of one global batch and the
learning rate; it returns the loss averaged over the whole global batch, so every layout logs the same
numbers as the single-process run:

    loss(step) = 1/G sum_{sequences of the global batch} mean_{tokens} CE
               = mean over dp ranks of sum_i w_i micro_loss_i        (w_i = 1/n_micro for equal shares)

Backward runs on w_i micro_loss_i (times the fp16 loss scale), and the data-parallel sync averages over
dp, so the summed gradient is exactly the gradient of the global-batch mean. `train_step` is the only
one; no strategy overrides it:

    sync.begin_step                        zero this step's gradients
    schedule.forward_backward              micro-batches in the schedule's order (sync.micro_batch around each)
    transforms' after_backward, sync.reduce   tp fix-ups, then the data-parallel reduction (or push/pull)
    precision.unscale_and_check            fp16: / S, found_inf agreed by every rank (mixed_precision.py)
    grad_norm, sync.mean_loss              ||g|| over the whole model, loss over the global batch
    sync.finish_step                       clip + optimizer (+ ZeRO all-gather, local SGD's outer step), or skip

Injected faults live in the batch plan: `faults.slow: {rank: factor}` stretches this rank's compute
by sleeping (factor - 1) x the measured compute time, standing in for a slower or straggling machine.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack

import torch
import torch.distributed as dist
from torch import nn

from llama_course.core.engine_protocol import Abandon, BatchPlan, EngineParts, GradientSync, Schedule
from llama_course.core.fp8 import use_fp8
from llama_course.core.mixed_precision import MixedPrecision
from llama_course.core.model import cross_entropy
from llama_course.core.moe import aux_loss
from llama_course.core.optimizers import build_optimizer, optimizer_for_groups
from llama_course.core.profiling import Tracer


class NonFiniteError(RuntimeError):
    """The loss or gradient norm was NaN or infinite and training.on_nonfinite is 'stop'."""


class Sequential(Schedule):
    """Micro-batches one after another on this rank (no pipeline): forward, backward, next."""

    name = "single"

    def forward_backward(self, engine, micro_batches: list, weights: list) -> float:
        total, dev = 0.0, engine.ctx.device
        for i, ((x, y), w) in enumerate(zip(micro_batches, weights)):
            engine.plan.before_micro_batch(engine)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with engine.sync.micro_batch(i == len(micro_batches) - 1):
                start = time.perf_counter()
                with engine.tracer.span("forward", "compute"):
                    loss = engine.forward_loss(x, y)
                with engine.tracer.span("backward", "compute"):
                    engine.precision.scale(loss * w).backward()
                engine.plan.stretch(engine, time.perf_counter() - start)
            total += w * loss.detach().float().item()
        return total

    @torch.no_grad()
    def evaluate(self, engine, batches: list) -> float:
        dev = engine.ctx.device
        engine.model.eval()
        try:
            losses = [float(engine.forward_loss(x.to(dev), y.to(dev))) for x, y in batches]
        finally:
            engine.model.train()
        return sum(losses) / max(len(losses), 1)


class Engine:
    """This rank's part of the model, its optimizer, and the one training step over the engine's pieces.

    `Engine(cfg, ctx, model)` with no parts is one replica of the whole model (dp = tp = pp = 1);
    `llama_course.engine.build_engine` gives every other layout its pieces. `loss_fn(logits, targets,
    tokens)` replaces the cross-entropy (distillation reads the teacher's logits of the same tokens)."""

    def __init__(self, cfg, ctx, model: nn.Module, tracer: Tracer | None = None, parts: EngineParts | None = None,
                 loss_fn=None):
        parts = parts or EngineParts()
        self.cfg, self.ctx, self.name = cfg, ctx, parts.name
        self.tracer = tracer or Tracer(enabled=False, rank=ctx.rank)
        self.n_micro = cfg.grad_accum_steps
        self.slow_factor = float(cfg.faults.slow.get(ctx.rank, 1.0))
        self.transforms = list(parts.transforms)
        self.schedule = parts.schedule or Sequential()
        self.sync = parts.sync or GradientSync()
        self.plan = parts.plan or BatchPlan()
        self.precision = MixedPrecision(cfg.training.precision, ctx.device, cfg.training.grad_reduce_dtype)
        self.loss_fn = loss_fn
        for transform in self.transforms:
            model = transform.apply(model)
        if cfg.training.fp8:                # the final linear layers (tp shards, pipeline chunks) in FP8
            use_fp8(model)
        self.base_model = model.to(ctx.device)
        self.sync.attach(self)
        self.model = self.sync.wrap(self.base_model)
        if cfg.training.compile:
            self.model = torch.compile(self.model)
        self.optimizer = None
        if self.sync.owns_optimizer:
            groups = self.sync.optimizer_groups()
            self.optimizer = build_optimizer(cfg, self.base_model) if groups is None else optimizer_for_groups(cfg, groups)
            self.sync.attach_optimizer(self.optimizer)
        self.schedule.attach(self)
        loss_owners = [t for t in self.transforms if t.provides_loss]
        self.loss_owner = loss_owners[-1] if loss_owners else None
        self.router_aux = torch.zeros((), device=ctx.device)

    # ---- pieces the schedules call ------------------------------------------------------------------
    def forward_loss(self, x: torch.Tensor, y: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Forward in the training precision, then the loss in fp32 (the vocab-parallel one under tp); in
        training, a mixture of experts adds model.router_aux_loss x its load-balancing loss (core/moe.py)."""
        module = module or self.model
        with self.precision.autocast():
            logits = module(x)
        if self.loss_fn is not None:
            loss = self.loss_fn(logits, y, x)
        elif self.loss_owner is not None:
            loss = self.loss_owner.loss(module, logits, y)
        else:
            loss = cross_entropy(logits, y)
        aux = aux_loss(module) if module.training and self.cfg.model.n_experts else None
        if aux is not None:
            self.router_aux += aux.detach().float()
            loss = loss + self.cfg.model.router_aux_loss * aux
        return loss

    def forward_backward(self, micro_batches: list, weights: list | None = None) -> float:
        """Run the schedule: this rank's share sum_i w_i loss_i of the global loss (bench times this call)."""
        weights = weights if weights is not None else self.plan.weights(self, micro_batches)
        return self.schedule.forward_backward(self, self.local_batches(micro_batches), weights)

    def local_batches(self, batches: list) -> list:
        """This rank's part of each micro-batch (x, y) of whole sequences (context parallelism: its chunks)."""
        for transform in self.transforms:
            batches = [transform.local_batch(x, y) for x, y in batches]
        return batches

    def loss_contexts(self) -> ExitStack:
        stack = ExitStack()
        for transform in self.transforms:
            stack.enter_context(transform.loss_context())
        return stack

    # ---- the step -----------------------------------------------------------------------------------
    def batches_for_step(self, sampler, sequences, step: int) -> list:
        return self.plan.batches(self, sampler, sequences, step)

    def train_step(self, micro_batches: list, lr: float) -> dict:
        """One optimizer step over this rank's micro-batches. Returns loss (global mean), grad_norm,
        skipped, forward_backward_s and the sync's metrics (bytes_sent, staleness, ...)."""
        ctx, training = self.ctx, self.cfg.training
        self.sync.begin_step()
        self.router_aux = torch.zeros((), device=ctx.device)
        start, abandoned = time.perf_counter(), False
        with self.loss_contexts():
            try:
                local = self.forward_backward(micro_batches)
            except Abandon:
                local, abandoned = 0.0, True
        seconds = time.perf_counter() - start
        use = self.plan.contribution(self, seconds, micro_batches, abandoned)
        if use != 1.0:                          # the plan defers the reduction (engine.py), so p.grad is whole
            local *= use
            for q in self.base_model.parameters():
                if q.grad is not None:
                    q.grad.mul_(use)
        with self.tracer.span(self.sync.span, "comm"):
            for transform in self.transforms:
                transform.after_backward(self.base_model)
            self.sync.reduce()
        found_inf = self.precision.unscale_and_check(self.sync.grads(), [ctx.dp_group, ctx.tp_group, ctx.pp_group])
        with self.tracer.span("grad_norm", "step"):
            norm = self.grad_norm()
        with self.tracer.span("loss_all_reduce", "comm"):
            loss = self.sync.mean_loss(local)
        bad_loss, bad_norm = not math.isfinite(loss), not math.isfinite(norm)
        skipped = found_inf or bad_loss or bad_norm
        if training.on_nonfinite == "stop" and (bad_loss or bad_norm and not found_inf):
            raise NonFiniteError(f"non-finite loss ({loss}) or gradient norm ({norm}); "
                                 "set training.on_nonfinite=skip to skip such steps")
        out = {"loss": loss, "grad_norm": norm, "skipped": skipped}
        if self.cfg.model.n_experts:          # this rank's mean load-balancing loss over its micro-batches
            out["router_aux_loss"] = float(self.router_aux) / max(len(micro_batches), 1)
        out.update(self.sync.finish_step(lr, norm, skipped))
        self.precision.update(found_inf)
        out.update(self.sync.metrics())
        out["forward_backward_s"] = seconds
        if self.precision.scaler:
            out["loss_scale"] = self.precision.scaler.scale
        return out

    def clip_and_step(self, lr: float, norm: float) -> None:
        """Clip to training.grad_clip by the global norm, then the optimizer step at `lr`."""
        clip = self.cfg.training.grad_clip
        if clip > 0 and norm > clip:
            self.scale_gradients(clip / (norm + 1e-6))
        with self.tracer.span("optimizer", "compute"):
            self.optimizer_step(lr)

    def optimizer_step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def scale_gradients(self, factor: float) -> None:
        for g in self.sync.grads():
            g.mul_(factor)

    def grad_norm(self) -> float:
        """L2 norm of the whole model's gradient: this rank's squares (a tensor split over tp counted on
        every tp rank, a replicated one on tp rank 0 only; DTensors by their own placements; experts of
        expert parallelism summed over the ep group), summed over the sync's shard group, the tp group and
        the pipeline stages."""
        ctx = self.ctx
        local = torch.zeros((), dtype=torch.float64, device=ctx.device)
        whole = torch.zeros((), dtype=torch.float64, device=ctx.device)
        experts = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for name, q, g in self.sync.norm_terms():
            if hasattr(g, "placements"):                   # DTensor (FSDP2, torch TP): its norm, all ranks agree
                whole += _dtensor_norm(g).double() ** 2
            elif getattr(q, "expert_parallel", False):     # this ep rank's experts: the ep group holds them all
                experts += g.double().pow(2).sum()
            elif ctx.tp == 1 or ctx.tp_rank == 0 or self.splits(self.full_name(name), q):
                local += g.double().pow(2).sum()
        for group in (self.sync.norm_group(), ctx.tp_group if ctx.tp > 1 else None):
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(local, group=group)
        if ctx.ep > 1:
            dist.all_reduce(experts, group=ctx.ep_group)
        total = local + whole + experts
        if ctx.pp > 1:
            dist.all_reduce(total, group=ctx.pp_group)
        return float(total.sqrt())

    def full_name(self, name: str) -> str:
        for transform in reversed(self.transforms):
            name = transform.full_name(name)
        return name

    def splits(self, name: str, param: torch.Tensor) -> bool:
        return any(t.splits(name, param) for t in self.transforms)

    def evaluate(self, batches: list) -> float:
        """Mean loss over held-out batches (every rank computes it; the result is the same on all)."""
        with self.loss_contexts():
            loss = self.schedule.evaluate(self, self.local_batches(batches))
        for transform in self.transforms:
            loss = transform.mean_eval_loss(loss)
        return loss

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = self.sync.state_dict()
        if self.precision.scaler:
            state["loss_scaler"] = self.precision.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sync.load_state_dict(state)
        self.precision.load_state_dict(state.get("loss_scaler", {}))

    def full_model_state(self) -> dict | None:
        """The whole model's state dict on rank 0 (None elsewhere), for eval / generate / compress."""
        with self.sync.gathered():
            return self._gather_full(self.base_model.state_dict().items())

    def full_gradients(self) -> dict | None:
        """Every gradient under its full-model name, whole, on rank 0 (tests)."""
        return self._gather_full((n, q.grad) for n, q in self.base_model.named_parameters() if q.grad is not None)

    def _gather_full(self, items) -> dict | None:
        named = {}
        for name, t in items:
            named[self.full_name(name)] = t.full_tensor() if hasattr(t, "full_tensor") else t
        for transform in self.transforms:
            named = transform.gather_full(self.ctx, named)
        if self.ctx.rank != 0:
            return None
        return {n: t.detach().cpu().clone() for n, t in named.items()}

    def checkpoint_writer(self) -> bool:
        return self.sync.checkpoint_writer()

    def checkpoint_source_rank(self) -> int:
        return self.sync.checkpoint_source_rank()

    def checkpoint_group(self) -> tuple:
        return self.sync.checkpoint_group()

    def close(self) -> None:
        self.sync.close()


def _dtensor_norm(g) -> torch.Tensor:
    """||g|| of a DTensor gradient over its whole mesh (a Partial one is reduced first)."""
    from torch.distributed.tensor import Replicate

    if any(p.is_partial() for p in g.placements):
        g = g.redistribute(placements=[Replicate()] * len(g.placements))
    return torch.linalg.vector_norm(g).full_tensor()
