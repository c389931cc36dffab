"""Which pieces make the engine of a config: model transforms + a schedule + a gradient sync + a batch plan.

The engine itself, with its one `train_step`, is `core/train_step.Engine`; the pieces are declared in
`core/engine_protocol.py` and implemented next to their concepts. This module only chooses them:

    config                                     piece                      module
    parallel.tp > 1                            TensorParallel (course) / TorchTensorParallel (DTensor)   parallel/tensor_parallel.py
    parallel.cp > 1                            ContextParallel (K/V all-gather attention)   parallel/context_parallel.py
    parallel.ep > 1                            ExpertParallel (E/ep experts, all-to-all dispatch)   parallel/expert_parallel.py
    parallel.activation_checkpointing          ActivationCheckpointing    parallel/activation_checkpointing.py
    parallel.pp > 1                            PipelineSplit + PipelineSchedule / TorchPipelineSchedule  parallel/pipeline_parallel.py
    training.fp8                               use_fp8, in the Engine after the transforms               core/fp8.py
    pp = 1                                     Sequential schedule        core/train_step.py
    dp x cp > 1, implementation course         DataParallelSync: naive / bucketed ring, ZeRO-1/2/3,       parallel/data_parallel.py
                                               compression (parallel/communication_compression.py)
    dp x cp > 1, implementation torch          DDPSync (+ comm hooks), FSDP2Sync (zero_stage >= 1, 2-D   parallel/data_parallel_torch.py
                                               under tp), TorchAllReduceSync (tp/pp shards)
    parallel.sync local_sgd                    LocalSGDSync (outer step every local_steps)               coordination/sync_async.py
    parallel.strategy parameter_server         ParameterServerSync (workers; servers run `serve`)         coordination/parameter_server.py
    load_balance.policy dynamic_batch /        LoadBalancedPlan (shares and weights; any dp sync,         coordination/load_balancing.py
      backup_workers                             ZeRO included)

Which combinations exist is not decided here: the capability table (simulator/capabilities.py) names the
engine of every combination the runtime runs, and config validation refuses the rest with one line naming
the fields (ConfigError, exit code 2) before any piece is built, in `simulate`, `plan` and `train` alike.

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
from simulator.capabilities import engine_for


def engine_name(cfg) -> str:
    """The layout's name (checkpoint manifests, the banner, tests): the engine the capability table's
    row for this config names (simulator/capabilities.py, the table validation and the planner read;
    ConfigError for a combination no row allows)."""
    return engine_for(cfg)


def engine_parts(cfg, ctx: Context, heartbeats: Heartbeats = Heartbeats()) -> EngineParts:
    """The pieces of this config's engine (`heartbeats`: a parameter-server worker's failure detection)."""
    p = cfg.parallel
    name = engine_name(cfg)                 # the capability table: refuses what no row allows, in one line
    plan = LoadBalancedPlan(cfg, ctx) if cfg.load_balance.policy in ("dynamic_batch", "backup_workers") \
        and p.dp > 1 else None
    schedule = None
    if p.pp > 1:
        schedule = PipelineSchedule(cfg, ctx) if p.implementation == "course" else TorchPipelineSchedule(cfg, ctx)
    return EngineParts(name=name, transforms=model_transforms(cfg, ctx), schedule=schedule,
                       sync=gradient_sync(cfg, ctx, plan, heartbeats), plan=plan)


def gradient_sync(cfg, ctx: Context, plan, heartbeats: Heartbeats = Heartbeats()):
    """The gradient sync of a config (None: the single replica's, no communication)."""
    p = cfg.parallel
    if p.strategy == "parameter_server":
        return ParameterServerSync(cfg, ctx, heartbeats)
    if p.sync == "local_sgd":
        return LocalSGDSync(cfg, ctx)
    if cfg.replicas == 1 and p.zero_stage == 0:     # replicas: dp x cp ranks average gradients
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


def build_engine(cfg, ctx: Context, model: nn.Module, tracer: Tracer | None = None,
                 heartbeats: Heartbeats = Heartbeats()) -> Engine:
    """The engine for this config."""
    return Engine(cfg, ctx, model, tracer, engine_parts(cfg, ctx, heartbeats))


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()
