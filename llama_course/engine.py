"""Which pieces make the engine of a config: model transforms + a schedule + a gradient sync + a batch plan.

The engine itself, with its one `train_step`, is `core/train_step.Engine`; the pieces are declared in
`core/engine_protocol.py` and implemented next to their concepts. This module only chooses them:

    config                                     piece                      module
    parallel.tp > 1                            TensorParallel (course) / TorchTensorParallel (DTensor)   parallel/tensor_parallel.py
    parallel.activation_checkpointing          ActivationCheckpointing    parallel/activation_checkpointing.py
    parallel.pp > 1                            PipelineSplit + PipelineSchedule / TorchPipelineSchedule  parallel/pipeline_parallel.py
    pp = 1                                     Sequential schedule        core/train_step.py
    dp > 1, implementation course              DataParallelSync: naive / bucketed ring, ZeRO-1/2/3,       parallel/data_parallel.py
                                               compression (parallel/communication_compression.py)
    dp > 1, implementation torch               DDPSync (+ comm hooks), FSDP2Sync (zero_stage >= 1, 2-D   parallel/data_parallel_torch.py
                                               under tp), TorchAllReduceSync (tp/pp shards)
    parallel.sync local_sgd                    LocalSGDSync (outer step every local_steps)               coordination/sync_async.py
    parallel.strategy parameter_server         ParameterServerSync (workers; servers run `serve`)         coordination/parameter_server.py
    load_balance.policy dynamic_batch /        LoadBalancedPlan (shares and weights; any dp sync,         coordination/load_balancing.py
      backup_workers                             ZeRO included)

What no piece can do yet is refused here with one line naming the fields (ConfigError, exit code 2).

    llama-course train configs/tiny.yaml --set cluster.num_gpus=4 parallel.tp=2 parallel.zero_stage=1   # Megatron's distributed optimizer
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from llama_course.coordination.load_balancing import LoadBalancedPlan
from llama_course.coordination.parameter_server import ParameterServerSync
from llama_course.coordination.parameter_server_comm import Heartbeats
from llama_course.coordination.sync_async import LocalSGDSync
from llama_course.core.distributed import Context
from llama_course.core.engine_protocol import EngineParts
from llama_course.core.model import cross_entropy  # noqa: F401  (engines and tests import it from here)
from llama_course.core.profiling import Tracer
from llama_course.core.train_step import Engine, NonFiniteError, Sequential  # noqa: F401  (the engine's home)
from llama_course.parallel.communication_compression import build_compressor
from llama_course.parallel.data_parallel import DataParallelSync
from llama_course.parallel.data_parallel_torch import DDPSync, FSDP2Sync, TorchAllReduceSync
from llama_course.parallel.parallel_3d import model_transforms
from llama_course.parallel.pipeline_parallel import PipelineSchedule, TorchPipelineSchedule
from simulator.config import ConfigError


def engine_name(cfg) -> str:
    """The layout's name (checkpoint manifests, tests)."""
    p = cfg.parallel
    if p.strategy == "parameter_server":
        return "parameter_server"
    if p.tp > 1 and p.pp > 1 or (p.tp > 1 or p.pp > 1) and p.dp > 1:
        return "parallel_3d"
    if p.pp > 1:
        return "pipeline_parallel" if p.implementation == "course" else "torch_pipeline"
    if p.tp > 1:
        return "tensor_parallel" if p.implementation == "course" else "torch_tensor_parallel"
    if p.sync == "local_sgd":
        return "local_sgd"
    if cfg.load_balance.policy in ("dynamic_batch", "backup_workers") and p.dp > 1:
        return "load_balancing"
    if p.dp > 1 or p.zero_stage > 0:
        if p.implementation == "torch":
            return "fsdp2" if p.zero_stage >= 1 else "ddp"   # FSDP2 covers ZeRO-2 (reshard_after_forward=False) and 3
        return "data_parallel"
    return "single"


def engine_parts(cfg, ctx: Context, heartbeats: Heartbeats = Heartbeats()) -> EngineParts:
    """The pieces of this config's engine (`heartbeats`: a parameter-server worker's failure detection)."""
    p = cfg.parallel
    refuse_unsupported(cfg)
    plan = LoadBalancedPlan(cfg, ctx) if cfg.load_balance.policy in ("dynamic_batch", "backup_workers") \
        and p.dp > 1 else None
    schedule = None
    if p.pp > 1:
        schedule = PipelineSchedule(cfg, ctx) if p.implementation == "course" else TorchPipelineSchedule(cfg, ctx)
    return EngineParts(name=engine_name(cfg), transforms=model_transforms(cfg, ctx), schedule=schedule,
                       sync=gradient_sync(cfg, ctx, plan, heartbeats), plan=plan)


def gradient_sync(cfg, ctx: Context, plan, heartbeats: Heartbeats = Heartbeats()):
    """The gradient sync of a config (None: the single replica's, no communication)."""
    p = cfg.parallel
    if p.strategy == "parameter_server":
        return ParameterServerSync(cfg, ctx, heartbeats)
    if p.sync == "local_sgd":
        return LocalSGDSync(cfg, ctx)
    if p.dp == 1 and p.zero_stage == 0:
        return None
    # reduce only after backward when a gradient changes after it or a rank may compute nothing: a
    # load-balanced plan (a share of 0 sequences, a late backup worker weighted 0), or sequence
    # parallelism, which sums the norms' gradients over tp first
    deferred = plan is not None or p.tp > 1 and p.sequence_parallel
    if p.implementation == "course":
        return DataParallelSync(cfg, ctx, build_compressor(cfg), deferred)
    if p.zero_stage >= 1:
        return FSDP2Sync(cfg, ctx)
    if p.tp > 1 or p.pp > 1 or plan is not None:
        return TorchAllReduceSync(cfg, ctx, build_compressor(cfg))
    return DDPSync(cfg, ctx, build_compressor(cfg))


def refuse_unsupported(cfg) -> None:
    """One line for each combination the runtime does not run (the capability table lists the rest)."""
    p, lb = cfg.parallel, cfg.load_balance.policy
    if p.strategy == "parameter_server" and cfg.training.precision == "fp16":
        raise ConfigError("training.precision: fp16 with parallel.strategy parameter_server is not supported "
                          "(the loss scale would have to agree between workers and servers); use bf16 or fp32")
    if p.strategy == "parameter_server" and (p.tp > 1 or p.pp > 1):
        raise ConfigError("parallel.strategy: parameter_server runs data parallel only (tp = pp = 1)")
    if (p.strategy == "parameter_server" or p.sync == "local_sgd") and p.compression != "none":
        raise ConfigError(f"parallel.compression: {p.compression} compresses data-parallel gradient reductions; "
                          f"{'the parameter server' if p.strategy == 'parameter_server' else 'local SGD'} has none")
    if p.sync == "local_sgd" and (p.zero_stage or p.tp > 1 or p.pp > 1):
        raise ConfigError("parallel.sync: local_sgd averages whole replicas (zero_stage 0, tp = pp = 1)")
    if lb in ("dynamic_batch", "backup_workers") and (p.tp > 1 or p.pp > 1):
        raise ConfigError(f"load_balance.policy: {lb} shares the batch over data-parallel ranks only (tp = pp = 1)")
    if lb in ("dynamic_batch", "backup_workers") and (p.strategy == "parameter_server" or p.sync == "local_sgd"):
        raise ConfigError(f"load_balance.policy: {lb} needs a collective gradient sync (sync bsp, strategy collective)")
    if p.pp > 1 and p.zero_stage >= 3 and p.implementation == "course":
        raise ConfigError("parallel.zero_stage: 3 gathers each block's weights per micro-batch; with pp > 1 use "
                          "zero_stage 1 or 2 (Megatron's distributed optimizer)")
    if p.pp > 1 and p.zero_stage >= 1 and p.implementation == "torch":
        raise ConfigError("parallel.zero_stage: implementation torch shards with FSDP2, not under pp > 1 here; "
                          "use implementation course (ZeRO-1/2) or zero_stage 0")
    if p.implementation == "torch" and p.zero_stage >= 1 and p.compression in ("topk", "powersgd"):
        raise ConfigError(f"parallel.compression: {p.compression} needs an all-reduce; FSDP2 reduce-scatters "
                          "(use fp16/bf16, or zero_stage 0)")


def build_engine(cfg, ctx: Context, model: nn.Module, tracer: Tracer | None = None,
                 heartbeats: Heartbeats = Heartbeats()) -> Engine:
    """The engine for this config."""
    return Engine(cfg, ctx, model, tracer, engine_parts(cfg, ctx, heartbeats))


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()
