"""The training step, whatever the layout: forward, backward, gradient sync, clip, optimizer step.

An `Engine` owns this rank's part of the model and its optimizer. The trainer hands it the rank's
micro-batches of one global batch and the learning rate; the engine returns the loss averaged over the
whole global batch, so every layout logs the same numbers as the single-process run:

    loss(step) = 1/G sum_{sequences of the global batch} mean_{tokens} CE = mean over dp ranks of
                 (1/n_micro sum_{micro-batches} micro_loss)          (all sequences have seq_len tokens)

Backward runs on micro_loss / n_micro, and the data-parallel reduction averages over dp, so the summed
gradient is exactly the gradient of the global-batch mean. Subclasses change one piece each:

- `Engine`            one replica, no communication (dp = tp = pp = 1);
- `DDPEngine`         torch DistributedDataParallel over the dp group (implementation: torch);
- data_parallel.py, tensor_parallel.py, pipeline_parallel.py, parallel_3d.py, parameter_server.py:
  the course's own strategies, registered in `ENGINES` and chosen by `build_engine` from the config.

Injected faults live here too: `faults.slow: {rank: factor}` stretches this rank's compute by sleeping
(factor - 1) x the measured compute time, standing in for a slower or straggling machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from llama_course.core.distributed import Context, all_reduce_mean
from llama_course.core.model import cross_entropy  # noqa: F401  (engines and tests import it from here)
from llama_course.core.optimizers import build_optimizer
from llama_course.core.profiling import Tracer
from simulator import spec
from simulator.capabilities import engine_for
from simulator.config import ConfigError


class NonFiniteError(RuntimeError):
    """The loss or gradient norm was NaN or infinite and training.on_nonfinite is 'stop'."""


class Engine:
    """One replica of the whole model on this rank. Subclasses override the hooks below."""

    name = "single"

    def __init__(self, cfg, ctx: Context, model: nn.Module, tracer: Tracer | None = None):
        self.cfg, self.ctx = cfg, ctx
        self.tracer = tracer or Tracer(enabled=False, rank=ctx.rank)
        self.n_micro = cfg.grad_accum_steps
        self.slow_factor = float(cfg.faults.slow.get(ctx.rank, 1.0))
        self.base_model = model.to(ctx.device)
        if cfg.parallel.activation_checkpointing != "none" and hasattr(model, "layers"):
            from llama_course.parallel.activation_checkpointing import apply_activation_checkpointing

            apply_activation_checkpointing(model.layers, cfg.parallel.activation_checkpointing)
        self.model = self.wrap(self.base_model)
        if cfg.training.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(cfg, self.base_model)
        cuda = ctx.device.type == "cuda"
        precision = cfg.training.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda") if cuda and precision == "fp16" else None

    # ---- hooks ----------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Wrap the model for this layout (DDP, FSDP, ...). Default: as it is."""
        return model

    def sync_context(self, is_last_micro: bool):
        """Context for one micro-batch's backward (DDP: no_sync on all but the last)."""
        return nullcontext()

    def reduce_gradients(self) -> None:
        """Make .grad the global-batch gradient after the last backward (DDP does it inside backward)."""

    def grad_norm(self) -> torch.Tensor:
        """L2 norm of the full gradient (sharded engines add their shards' squares over the group)."""
        grads = [p.grad for p in self.base_model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.ctx.device)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def loss_group(self):
        """The group over which this rank's local loss is averaged into the global-batch loss."""
        return self.ctx.dp_group if self.ctx.dp > 1 else None

    # ---- the step -------------------------------------------------------------------------------
    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext():
            logits = self.model(x)
        return cross_entropy(logits, y)

    def forward_backward(self, micro_batches: list) -> float:
        """Forward and backward every micro-batch; returns this rank's mean micro-batch loss."""
        total = 0.0
        for i, (x, y) in enumerate(micro_batches):
            x, y = x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
            last = i == len(micro_batches) - 1
            with self.sync_context(last):
                start = time.perf_counter()
                with self.tracer.span("forward", "compute"):
                    loss = self.forward_loss(x, y)
                scaled = loss / len(micro_batches)
                with self.tracer.span("backward", "compute"):
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                self.stretch(time.perf_counter() - start)
            total += loss.detach().float().item()
        return total / len(micro_batches)

    def stretch(self, seconds: float) -> None:
        """faults.slow: sleep so this compute took slow_factor x as long."""
        if self.slow_factor > 1:
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            time.sleep((self.slow_factor - 1) * seconds)

    def optimizer_step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def train_step(self, micro_batches: list, lr: float) -> dict:
        """One optimizer step over this rank's micro-batches. Returns loss (global mean), grad_norm, skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        local_loss = self.forward_backward(micro_batches)
        with self.tracer.span(spec.gradient_sync_event(self.cfg.parallel.zero_stage), "comm"):
            self.reduce_gradients()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        with self.tracer.span("grad_norm", "step"):
            norm = float(self.grad_norm())
        with self.tracer.span("loss_all_reduce", "comm"):
            loss = all_reduce_mean(local_loss, self.loss_group(), self.ctx.device)
        skipped = not (math.isfinite(loss) and math.isfinite(norm))
        if skipped:
            if self.cfg.training.on_nonfinite == "stop":
                raise NonFiniteError(f"non-finite loss ({loss}) or gradient norm ({norm}); "
                                     "set training.on_nonfinite=skip to skip such steps")
            self.optimizer.zero_grad(set_to_none=True)
        else:
            clip = self.cfg.training.grad_clip
            if clip > 0 and norm > clip:
                self.scale_gradients(clip / (norm + 1e-6))
            with self.tracer.span("optimizer", "compute"):
                self.optimizer_step(lr)
        return {"loss": loss, "grad_norm": norm, "skipped": skipped}

    def scale_gradients(self, factor: float) -> None:
        for p in self.base_model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

    @torch.no_grad()
    def evaluate(self, batches: list) -> float:
        """Mean loss over held-out batches (every rank computes it; the result is the same on all)."""
        self.model.eval()
        try:
            losses = [float(self.forward_loss(x.to(self.ctx.device), y.to(self.ctx.device))) for x, y in batches]
        finally:
            self.model.train()
        return sum(losses) / max(len(losses), 1)

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's training state (model part, optimizer part) for a checkpoint."""
        return {"model": self.base_model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def full_model_state(self) -> dict | None:
        """The whole model's state dict on rank 0 (None elsewhere), for eval / generate / compress."""
        return self.base_model.state_dict() if self.ctx.rank == 0 else None

    def checkpoint_writer(self) -> bool:
        """Whether this rank writes its state (replicas of the same shard write once)."""
        return self.ctx.dp_rank == 0

    def checkpoint_source_rank(self) -> int:
        """Which rank's saved state this rank loads on resume (its replica that wrote it)."""
        c = self.ctx
        return spec.rank_of(c.pp_rank, 0, c.tp_rank, c.dp, c.tp)

    def checkpoint_group(self) -> tuple:
        """(process group, ranks) a checkpoint is collective over: (None, None) means every rank."""
        return None, None


class DDPEngine(Engine):
    """torch.nn.parallel.DistributedDataParallel over the dp group: bucketed all-reduce overlapped with
    backward; no_sync() skips communication on all but the last micro-batch."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        bucket = self.cfg.parallel.bucket_mb or 25
        return DDP(model, process_group=self.ctx.dp_group, bucket_cap_mb=bucket,
                   device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                   )

    def sync_context(self, is_last_micro: bool):
        return nullcontext() if is_last_micro else self.model.no_sync()


# strategy name -> factory(cfg, ctx, model, tracer) -> Engine; strategy modules register themselves here
ENGINES: dict[str, Callable] = {"single": Engine, "ddp": DDPEngine}


def engine_name(cfg) -> str:
    """Which engine runs a config: the capability table's row for it (simulator/capabilities.py), the same
    table that validation and the planner read (ConfigError for a combination no engine runs)."""
    return engine_for(cfg)


def build_engine(cfg, ctx: Context, model: nn.Module, tracer: Tracer | None = None) -> Engine:
    """The engine for this config; strategy modules are imported on demand and register in ENGINES."""
    import importlib

    name = engine_name(cfg)
    if name not in ENGINES:
        module = {"fsdp2": "parallel.data_parallel", "data_parallel": "parallel.data_parallel",
                  "torch_pipeline": "parallel.pipeline_parallel", "pipeline_parallel": "parallel.pipeline_parallel",
                  "torch_tensor_parallel": "parallel.tensor_parallel", "tensor_parallel": "parallel.tensor_parallel",
                  "parallel_3d": "parallel.parallel_3d", "local_sgd": "coordination.sync_async",
                  "load_balancing": "coordination.load_balancing",
                  "parameter_server": "coordination.parameter_server"}.get(name, name)
        try:
            importlib.import_module(f"llama_course.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"llama_course.{module}":
                raise
    if name not in ENGINES:
        raise ConfigError(f"parallel: the layout needs engine '{name}', which this version does not have yet")
    return ENGINES[name](cfg, ctx, model, tracer)


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()
