"""What an engine is made of, and what the trainer may call: the declared protocol of every layout.

An engine trains this rank's part of the model. It is composed of four pieces, each a small class:

    full model ──ModelTransform(s)──> this rank's part      tensor-parallel shards, activation checkpointing,
                                                           pipeline stages (applied in order)
    micro-batches ──Schedule──> forward + backward          one after another, or GPipe / 1F1B / interleaved
    gradients ──GradientSync──> what the optimizer reads     none, DDP, bucketed/naive ring, ZeRO-1/2/3, FSDP2,
                                                           compression hooks, local SGD, parameter-server push/pull
    global batch ──BatchPlan──> this rank's micro-batches    equal shares, or load-balanced ones with weights

and one `train_step` (core/train_step.py) that calls them in the same order for every layout:

    sync.begin_step -> plan.weights -> schedule.forward_backward -> sync.reduce -> unscale (fp16, found_inf
    over every rank) -> grad norm -> mean loss -> skip or sync.finish_step (clip, optimizer, after-step work)

No piece overrides train_step; each one only answers the questions below. The defaults here are the
single replica's answers (no communication), so a piece overrides just what its strategy changes.
`TrainingEngine` lists everything the trainer and checkpointing call: nothing is found by probing.

Parameter-server *servers* are not engines: they are a role the trainer runs instead of training
(`coordination/parameter_server.serve`); the workers train with a push/pull GradientSync.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from llama_course.core.data import get_batch
from llama_course.core.distributed import all_reduce_mean


class Abandon(Exception):
    """Raised by a BatchPlan inside forward/backward when this rank's gradient will not be used this step
    (backup workers: the first N - b gradients are already in). The step goes on with a zero contribution."""


class StepAborted(RuntimeError):
    """Raised by a GradientSync when the step cannot complete (a peer left mid-reduction); nothing was
    applied, the caller may form a new group and run the same step again."""


class TrainingEngine(Protocol):
    """What the trainer, checkpointing and the fault-tolerance runners call on an engine."""

    name: str
    """The layout's name (manifests, tests): single, ddp, fsdp2, data_parallel, tensor_parallel, ..."""
    base_model: nn.Module
    """This rank's part of the model, unwrapped (state-dict names are the full model's, mapped by transforms)."""

    def batches_for_step(self, sampler, sequences, step: int) -> list:
        """This rank's micro-batches [(x, y)] of global batch `step`."""

    def train_step(self, micro_batches: list, lr: float) -> dict:
        """One optimizer step. Returns loss (mean over the global batch), grad_norm, skipped, and metrics."""

    def evaluate(self, batches: list) -> float:
        """Mean loss over held-out batches (the same value on every rank)."""

    def state_dict(self) -> dict:
        """This rank's training state for a checkpoint (model part, optimizer part, sync and scaler state)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (collective where the sync needs it)."""

    def full_model_state(self) -> dict | None:
        """The whole model's state dict on rank 0, None elsewhere (collective for sharded layouts)."""

    def checkpoint_writer(self) -> bool:
        """Whether this rank writes its state (replicas of the same part write once)."""

    def checkpoint_source_rank(self) -> int:
        """Which rank's saved state this rank loads on resume."""

    def checkpoint_group(self) -> tuple:
        """(process group, ranks) a checkpoint is collective over; (None, None) = every rank."""

    def close(self) -> None:
        """End of the run (a parameter-server worker says goodbye to its servers)."""


class ModelTransform:
    """A change to the model before the optimizer sees it. `apply` returns this rank's part."""

    name = "transform"
    provides_loss = False
    """True when the transformed model needs its own loss (vocabulary-parallel cross-entropy)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of the transformed model's output (only when provides_loss)."""
        raise TypeError(f"{type(self).__name__} keeps the model's own loss (provides_loss is False); "
                        "the engine calls loss() only on a transform that provides one")

    def loss_context(self):
        """Context around forward + loss + backward (DTensor's loss_parallel)."""
        return nullcontext()

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """This rank's part of a micro-batch of whole sequences (context parallelism: its chunks of each)."""
        return x, y

    def mean_eval_loss(self, loss: float) -> float:
        """A held-out loss of this rank's part -> the whole batches' (context parallelism: mean over cp)."""
        return loss

    def after_backward(self, model: nn.Module) -> None:
        """Gradient fix-ups inside the model-parallel group (sequence parallelism: tp sum of norm gradients)."""

    def splits(self, name: str, param: torch.Tensor) -> bool:
        """Whether `param` (full-model name `name`) is one shard of a tensor split over the tp group."""
        return False

    def full_name(self, name: str) -> str:
        """This rank's parameter name -> the full model's (pipeline chunks add a prefix)."""
        return name

    def gather_full(self, ctx, named: dict) -> dict:
        """{full name: this rank's tensor} -> whole tensors (collective; the engine calls the transforms in
        the order they were applied, then keeps rank 0's result)."""
        return named


class Schedule(ABC):
    """The order of forward and backward over the micro-batches (subclasses: Sequential, pipelines)."""

    name = "single"

    def attach(self, engine) -> None:
        """Called once the engine holds its model (pipelines build their send/recv here)."""
        return None

    @abstractmethod
    def forward_backward(self, engine, micro_batches: list, weights: list) -> float:
        """Forward and backward every micro-batch, backward on loss_i x weights[i] (scaled for fp16).
        Returns sum_i weights[i] loss_i as this rank's share of the global mean (0 where no loss is
        computed, e.g. pipeline stages before the last, after the schedule shares it)."""

    @abstractmethod
    def evaluate(self, engine, batches: list) -> float:
        """The mean loss over `batches`, forward only (held-out evaluation)."""


class GradientSync:
    """Turns each rank's gradient into the global-batch gradient the optimizer reads. This base class is
    the single replica: gradients stay where backward put them (p.grad), nothing is sent."""

    name = "none"
    span = "all_reduce"
    """Trace event name of the sync's communication."""
    owns_optimizer = True
    """False when the update happens elsewhere (parameter servers): the engine builds no optimizer."""

    def attach(self, engine) -> None:
        self.engine = engine

    # ---- setup -----------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module forward runs (DDP / FSDP2 wrappers; the course's engines register hooks)."""
        return model

    def optimizer_groups(self) -> list | None:
        """Param groups the optimizer steps (ZeRO: this rank's pieces); None = the model's parameters."""
        return None

    def attach_optimizer(self, optimizer) -> None:
        """Called once the optimizer exists (ZeRO gives LARS/LAMB whole-layer norms)."""

    # ---- one step --------------------------------------------------------------------------------
    def begin_step(self) -> None:
        for q in self.engine.base_model.parameters():
            q.grad = None

    def micro_batch(self, last: bool):
        """Context around one micro-batch's forward and backward (DDP: no_sync but on the last)."""
        return nullcontext()

    def reduce(self) -> None:
        """After the last backward: make the gradients the global-batch gradient."""

    def grads(self) -> list:
        """The gradient tensors the optimizer will read, each once (unscaled, clipped, checked for inf)."""
        seen, out = set(), []
        for q in self.engine.base_model.parameters():
            if q.grad is not None and id(q) not in seen:
                seen.add(id(q))
                out.append(q.grad)
        return out

    def norm_terms(self) -> list:
        """[(name, parameter, gradient tensor)] whose squares make this rank's part of ||g||^2."""
        seen, out = set(), []
        for name, q in self.engine.base_model.named_parameters():
            if q.grad is not None and id(q) not in seen:
                seen.add(id(q))
                out.append((name, q, q.grad))
        return out

    def norm_group(self):
        """Group over which norm_terms are disjoint pieces (sharded gradients: the dp group), else None."""
        return None

    def loss_group(self):
        """Group whose mean of the ranks' weighted losses is the global-batch loss."""
        ctx = self.engine.ctx
        return ctx.dp_group if ctx.dp > 1 else None

    def mean_loss(self, local: float) -> float:
        return all_reduce_mean(local, self.loss_group(), self.engine.ctx.device)

    def finish_step(self, lr: float, norm: float, skipped: bool) -> dict:
        """Apply the update (or drop it when skipped). Returns metrics to add to, or replace in, the step's."""
        if skipped:
            self.begin_step()
            return {}
        self.engine.clip_and_step(lr, norm)
        return {}

    def metrics(self) -> dict:
        return {}

    def gathered(self):
        """Context in which every parameter this rank holds is whole (ZeRO-3 gathers, then frees)."""
        return nullcontext()

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        e = self.engine
        return {"model": e.base_model.state_dict(),
                "optimizer": e.optimizer.state_dict() if e.optimizer is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        e = self.engine
        e.base_model.load_state_dict(state["model"])
        if e.optimizer is not None:
            e.optimizer.load_state_dict(state["optimizer"])

    def checkpoint_writer(self) -> bool:
        return self.engine.ctx.dp_rank == 0

    def checkpoint_source_rank(self) -> int:
        c = self.engine.ctx
        return (c.pp_rank * c.dp + 0) * c.tp + c.tp_rank

    def checkpoint_group(self) -> tuple:
        return None, None

    def close(self) -> None:
        """End of the run."""


class BatchPlan:
    """Which sequences of the global batch this rank trains on, and what each micro-batch's loss weighs.

    Default: equal shares (sampler.shard) per data shard (the cp replicas of one shard get the same whole
    sequences; the engine keeps each rank's chunks), weight 1 / (this rank's micro-batches); the sync
    averages over the replicas, so the summed gradient is the gradient of the global-batch mean."""

    name = "equal"

    def batches(self, engine, sampler, sequences, step: int) -> list:
        ctx, mb = engine.ctx, engine.cfg.parallel.micro_batch_size
        return [get_batch(sequences, idx) for idx in sampler.shard(step, ctx.data_rank, ctx.data_shards, mb)]

    def weights(self, engine, micro_batches: list) -> list:
        return [1.0 / len(micro_batches)] * len(micro_batches)

    def before_micro_batch(self, engine) -> None:
        """Called before each micro-batch (backup workers raise Abandon here)."""

    def contribution(self, engine, seconds: float, micro_batches: list, abandoned: bool) -> float:
        """After forward/backward (`seconds`): 1 to use this rank's gradient, 0 to drop it."""
        return 0.0 if abandoned else 1.0

    def stretch(self, engine, seconds: float) -> None:
        """faults.slow: make `seconds` of compute take slow_factor x as long (a straggler). The sleep stands
        in for compute, so the trace shows it as a compute span (`straggle`)."""
        if engine.slow_factor > 1:
            if engine.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            with engine.tracer.span("straggle", "compute"):
                time.sleep((engine.slow_factor - 1) * seconds)


@dataclass
class EngineParts:
    """The pieces one engine is built from (engine.py chooses them from the config)."""

    name: str = "single"
    transforms: list = field(default_factory=list)
    """ModelTransforms, applied in order to the full model."""
    schedule: Schedule | None = None
    """None: micro-batches one after another (train_step.Sequential)."""
    sync: GradientSync | None = None
    """None: the single replica's (no communication)."""
    plan: BatchPlan | None = None
    """None: equal shares of the global batch."""
