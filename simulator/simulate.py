"""Simulate: predict one training step of a config, and everything that follows from it.

    llama-course simulate configs/llama-7b-a100.yaml [--set parallel.tp=2] [--json] [--trace step.json]
    python -m simulator configs/llama-7b-a100.yaml --json          (no torch needed)

What it reports (docs/design.md, "JSON outputs"):

    step_time_s            one optimizer step of the slowest replica
    tokens_per_s           tokens_per_step / step_time_s             (tokens_per_s_per_gpu: / num_gpus)
    model_flops_per_step   tokens x 3 x forward FLOPs per token (no recomputation; a mixture of experts
                           counts its active parameters: `experts` below)
    hardware_tflops_per_gpu  (model FLOPs + recomputed FLOPs) / step / GPUs: Megatron-LM's "TFLOP/s per GPU"
    mfu                    model FLOPs / step / GPUs / dense peak of the precision
    memory_per_gpu_bytes   {params, grads, optimizer, activations, total} of the fullest GPU
    memory_capacity_bytes  what a GPU's tensors may use: its memory less memory_reserve_bytes (CUDA context,
                           NCCL buffers, fragmentation: `cluster.memory_reserve_GB`)
    breakdown_s            {compute, recompute, exposed_comm, bubble, optimizer, ...}: they add up to the step
                           (cpu: as the mean rank spends it; straggle_wait_s of its exposed_comm is that rank
                           waiting for the slowest, `Hardware.straggle_factor`; with faults.slow the
                           fast ranks' wait for the slow one is exposed_comm too); with pipelining, the
                           rank that ends the step (critical_stage)
    mean_breakdown_s       the same averaged over the pipeline's ranks (each adding up to the step; what a
                           trace averaged over ranks reads, as `compare` measures); = breakdown_s without it
    time_to_train_s        training.total_tokens / tokens_per_s (null when total_tokens is unset)
    experts                mixture of experts only: {params, active_params, all_to_all_s (the critical rank's
                           dispatch and combine all-to-alls in the step, exposed), all_to_all_share}

A layout that does not fit in memory is reported as such (fits_in_memory false, memory_excess_bytes) and
its time fields are null: a step time for a run that cannot start would be a bogus number.

Extending: a strategy module (parameter_server, sync_async, load_balancing, fault_tolerance, ...) plugs in
through `EXTENSIONS`: when its condition holds, `simulator.<module>.contribute(ctx)` is called after the
step is simulated and may change `ctx.breakdown` (seconds that add up to the step) and add JSON fields to
`ctx.extra`. A module that does not exist yet falls back to the simple model in `_fallbacks`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from dataclasses import dataclass, field

from simulator import model_compression
from simulator.collectives import CommModel
from simulator.config import Config, ConfigError, load_config
from simulator.config_checks import check_writable
from simulator.data_parallel import compression_factor, grad_bytes_per_param, zero_semantics
from simulator.expert_parallel import experts_report
from simulator.hardware import device_memory, hardware_for
from simulator.memory import layout_memory, stage_layers, virtual_stage_params
from simulator.parallel_3d import Layout, simulate_step
from simulator.topology import Cluster
from simulator.trace import write_trace
from simulator.workload import DTYPE_BYTES, model_flops_per_token


@dataclass
class Context:
    """What an extension module sees, and may change."""

    cfg: Config
    hw: object
    comm: CommModel
    layout: Layout
    step: object
    breakdown: dict
    extra: dict = field(default_factory=dict)


# (module name, condition): the module's `contribute(ctx)` runs when the condition holds
EXTENSIONS = [
    ("parameter_server", lambda cfg: cfg.parallel.strategy == "parameter_server"),
    ("sync_async", lambda cfg: cfg.parallel.sync != "bsp"),
    ("load_balancing", lambda cfg: cfg.load_balance.policy != "none" or bool(cfg.faults.slow)),  # stragglers too
    ("fault_tolerance", lambda cfg: cfg.faults.gpu_mtbf_hours is not None or cfg.checkpoint.every_steps > 0),
    ("communication_compression", lambda cfg: False),   # bytes factors are built in (data_parallel)
]


def simulate(cfg, trace_path: str | None = None, comm: CommModel | None = None, system: str | None = None) -> dict:
    """Simulate one step of `cfg` (a Config, a dict or a YAML path); returns the JSON fields.

    `comm`: a collective model of the same cluster to reuse (the planner shares one cache across layouts).
    `system`: whose data-parallel rules to price (course | fsdp2 | fsdp_sharded | deepspeed | deepspeed_2021,
    `data_parallel.zero_semantics`);
    None = the config's `parallel.implementation` (course, or fsdp2 for torch)."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    cfg = model_compression.effective_config(cfg)    # model compression: a structurally pruned model is narrower
    hw = hardware_for(cfg)
    p = cfg.parallel
    n_gpus = cfg.cluster.num_gpus
    n_micro = cfg.grad_accum_steps
    layers = stage_layers(cfg)
    mem, mem_rank = layout_memory(cfg, layers, n_micro, system)
    mem, compression = model_compression.adjust_memory(cfg, mem)    # model compression: low-bit weights
    capacity = device_memory(hw)
    tokens = cfg.tokens_per_step
    model_flops = tokens * model_flops_per_token(cfg.model, cfg.seq_len)
    result = {
        "config": {"model": cfg.model.preset, "gpu": hw.name, "num_gpus": n_gpus, "dp": p.dp, "cp": p.cp,
                   "ep": p.ep, "tp": p.tp, "pp": p.pp, "vpp": p.vpp, "schedule": p.schedule, "micro_batches": n_micro,
                   "zero_stage": p.zero_stage, "activation_checkpointing": p.activation_checkpointing,
                   "precision": cfg.training.precision, "grad_reduce_dtype": cfg.training.grad_reduce_dtype,
                   "data_parallel_system": zero_semantics(cfg, system).system},
        "tokens_per_step": tokens,
        "model_flops_per_step": model_flops,
        "memory_per_gpu_bytes": {k: float(v) for k, v in mem.items()},
        "memory_capacity_bytes": capacity,
        "memory_reserve_bytes": hw.memory_reserve,
        "memory_excess_bytes": max(0.0, mem["total"] - capacity),
        "fits_in_memory": mem["total"] <= capacity,
        "fullest_stage": mem_rank,
        "compression": compression,
    }
    nulls = ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "model_tflops_per_gpu",
             "hardware_tflops_per_gpu", "mfu", "breakdown_s", "mean_breakdown_s", "time_to_train_s")
    if not result["fits_in_memory"]:
        result.update({k: None for k in nulls})
        return result

    if comm is None:
        comm = CommModel(Cluster(hw, n_gpus))
    layout = Layout.of(cfg)
    step = simulate_step(cfg, hw, comm, record=trace_path is not None, system=system)
    ctx = Context(cfg, hw, comm, layout, step, dict(step.breakdown))
    for name, active in EXTENSIONS:
        if active(cfg):
            _contribute(name, ctx)
    breakdown = {k: float(v) for k, v in ctx.breakdown.items()}
    mean_breakdown = {k: max(0.0, v + step.mean_shift.get(k, 0.0)) for k, v in breakdown.items()}
    _straggle_as_wait(mean_breakdown, hw, n_gpus)
    straggle_wait = _straggle_as_wait(breakdown, hw, n_gpus)
    step_time = sum(breakdown.values())
    if not (math.isfinite(step_time) and step_time > 0):
        raise ConfigError("the config gives no work to time (check model and batch sizes)")
    hw_flops = model_flops + tokens * step.recompute_flops_per_token
    peak = hw.peak(cfg.training.precision)
    result.update({
        "step_time_s": step_time,
        "tokens_per_s": tokens / step_time,
        "tokens_per_s_per_gpu": tokens / step_time / n_gpus,
        "model_tflops_per_gpu": model_flops / step_time / n_gpus / 1e12,
        "hardware_tflops_per_gpu": hw_flops / step_time / n_gpus / 1e12,
        "hardware_flops_per_step": hw_flops,
        "mfu": model_flops / step_time / n_gpus / peak,
        "breakdown_s": breakdown,
        "mean_breakdown_s": mean_breakdown,
        "straggle_wait_s": straggle_wait,
        "comm_s": step.comm,
        "critical_stage": step.critical_rank,
        "simulated_ranks": p.pp * (2 if cfg.faults.slow else 1),
        "pipeline_events": step.pipeline.events,
        "time_to_train_s": (cfg.training.total_tokens / (tokens / step_time)
                            if cfg.training.total_tokens else None),
    })
    result.update(ctx.extra)
    if cfg.model.n_experts:
        result["experts"] = experts_report(cfg, comm, layout, step, step_time)
    if trace_path:
        write_trace(trace_path, step, layout, cfg)
    return result


def _straggle_as_wait(breakdown: dict, hw, n_gpus: int) -> float:
    """CPU processes sharing cores: the step's compute is the slowest rank's (`Hardware.straggle_factor` s
    behind their mean), but a component is read as the mean rank spends it: it computes 1/s of that time and
    waits the rest in the next synchronizing collective, which is where the runtime's trace puts it
    (`compare` averages each component over ranks). The step time does not change; returns the wait."""
    s, wait = hw.straggle_factor(n_gpus), 0.0
    for part in ("compute", "recompute"):
        moved = breakdown.get(part, 0.0) * (1 - 1 / s)
        breakdown[part] = breakdown.get(part, 0.0) - moved
        breakdown["exposed_comm"] = breakdown.get("exposed_comm", 0.0) + moved
        wait += moved
    return wait


def _contribute(name: str, ctx: Context) -> None:
    full = f"simulator.{name}"
    if importlib.util.find_spec(full) is not None:
        module = importlib.import_module(full)
        if hasattr(module, "contribute"):
            module.contribute(ctx)
            return
    fallback = _fallbacks.get(name)
    if fallback:
        fallback(ctx)


def _parameter_server(ctx: Context) -> None:
    """Fallback: workers push gradients to and pull weights from num_servers shards over the servers' NICs;
    replaces the all-reduce (the server NIC carries dp x Psi bytes each way)."""
    cfg, hw = ctx.cfg, ctx.hw
    psi = sum(virtual_stage_params(cfg, ctx.step.layers))
    nbytes = psi * (grad_bytes_per_param(cfg) * compression_factor(cfg) + DTYPE_BYTES[cfg.training.precision])
    t = cfg.parallel.dp * nbytes / (cfg.parallel.num_servers * hw.inter_bandwidth) + 2 * hw.inter_latency
    ctx.breakdown["exposed_comm"] += t - ctx.step.comm["dp_exposed"]
    ctx.extra["parameter_server_s"] = t


def _local_sgd(ctx: Context) -> None:
    """Fallback for sync local_sgd: the gradient/weight average happens once every local_steps steps."""
    if ctx.cfg.parallel.sync == "local_sgd":
        ctx.breakdown["exposed_comm"] -= ctx.step.comm["dp_exposed"] * (1 - 1 / ctx.cfg.parallel.local_steps)


_fallbacks = {"parameter_server": _parameter_server, "sync_async": _local_sgd}


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def _gb(x: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point (GB, MB, KB, B)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


def _flops(tflops: float) -> str:
    """A rate in TFLOP/s, or GFLOP/s below one TFLOP/s (CPUs)."""
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"


def format_summary(result: dict) -> str:
    """A human table of a simulate() result."""
    c = result["config"]
    lines = [f"{c['model']} on {c['num_gpus']} x {c['gpu']}: dp {c['dp']}"
             + (f" x cp {c['cp']}" if c.get("cp", 1) > 1 else "") + f" x tp {c['tp']} x pp {c['pp']}"
             + (f", ep {c['ep']}" if c.get("ep", 1) > 1 else "")
             + (f" (vpp {c['vpp']})" if c["vpp"] > 1 else "")
             + f", {c['schedule']}, {c['micro_batches']} micro-batches per step, ZeRO-{c['zero_stage']}, "
               f"recompute {c['activation_checkpointing']}, {c['precision']}"]
    if c["dp"] > 1:
        system = c.get("data_parallel_system", "course")
        note = {"course": "this package's own engines (parallel.implementation: course; set it to torch for "
                          "DDP / FSDP2)",
                "fsdp2": "DDP / FSDP2 (parallel.implementation: torch)",
                "fsdp_sharded": "FSDP reduce-scattering every micro-batch, also under a pipeline (Llama 3)",
                "deepspeed": "DeepSpeed's ZeRO",
                "deepspeed_2021": "DeepSpeed 0.3/0.4's ZeRO (2021: host-bound ZeRO-3 collectives)"}.get(system, system)
        lines.append(f"data parallel: gradients reduced in {c.get('grad_reduce_dtype', 'fp32')}, "
                     f"ZeRO-{c['zero_stage']} as {note}")
    mem = result["memory_per_gpu_bytes"]
    reserve = result.get("memory_reserve_bytes") or 0.0
    reserved = f"; {_gb(reserve)} more reserved for CUDA context, NCCL and fragmentation" if reserve else ""
    lines.append(f"memory per GPU: {_gb(mem['total'])} of {_gb(result['memory_capacity_bytes'])}{' usable' if reserve else ''} "
                 f"(params {_gb(mem['params'])}, grads {_gb(mem['grads'])}, optimizer {_gb(mem['optimizer'])}, "
                 f"activations {_gb(mem['activations'])}){reserved}")
    if result.get("compression"):                    # model compression (simulator/model_compression.py)
        lines.append(model_compression.summary_line(result["compression"]))
    if not result["fits_in_memory"]:
        lines.append(f"DOES NOT FIT: the fullest GPU (pipeline stage {result['fullest_stage']}) needs "
                     f"{_gb(result['memory_excess_bytes'])} more than it has. No step time is predicted; "
                     f"try more tp/pp, ZeRO, recomputation or a smaller micro-batch.")
        return "\n".join(lines)
    step = result["step_time_s"]
    lines += ["", "| part | seconds | share |", "|---|---:|---:|"]
    for part, sec in result["breakdown_s"].items():
        lines.append(f"| {part} | {sec:.4g} | {100 * sec / step:.1f}% |")
    lines.append(f"| **step** | **{step:.4g}** | 100% |")
    lines += ["",
              f"tokens/s {result['tokens_per_s']:,.0f} ({result['tokens_per_s_per_gpu']:,.0f} per GPU)",
              f"model {_flops(result['model_tflops_per_gpu'])} per GPU, hardware "
              f"{_flops(result['hardware_tflops_per_gpu'])} per GPU, MFU {100 * result['mfu']:.1f}%"]
    if result.get("experts"):
        x = result["experts"]
        n = lambda v: f"{v / 1e9:.3g}B" if v >= 1e9 else f"{v / 1e6:.3g}M"   # noqa: E731
        lines.append(f"mixture of experts: {n(x['params'])} parameters, {n(x['active_params'])} active "
                     f"(the model FLOPs count these); dispatch and combine all-to-alls {x['all_to_all_s']:.3g} s, "
                     f"{100 * x['all_to_all_share']:.1f}% of the step")
    if result["time_to_train_s"] is not None:
        lines.append(f"time to train: {result['time_to_train_s'] / 86400:.1f} days")
    return "\n".join(lines)


def cli(args) -> int:
    """`llama-course simulate CONFIG [--set k=v] [--json] [--trace FILE]`."""
    cfg = load_config(args.config, getattr(args, "overrides", None) or [])
    if getattr(args, "trace", None):
        check_writable("--trace", args.trace)
    result = simulate(cfg, trace_path=getattr(args, "trace", None))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result))
        if getattr(args, "trace", None):
            print(f"trace: {args.trace} (open in https://ui.perfetto.dev)")
    return 0
