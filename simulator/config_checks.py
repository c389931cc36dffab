"""Config rules of training, data, load balancing, faults and checkpoints, called by `config.resolve` (the model's
and the layout's rules stay there, beside the degrees they derive). Each raises ConfigError with one line naming
the field.
"""

from __future__ import annotations

import os
from typing import Any

from simulator.schema import FP8_GPUS, Config, ConfigError


def check_training(cfg: Config) -> None:
    """training.*, data.* and load_balance.*: fills training.grad_reduce_dtype and training.min_lr."""
    p, c, t = cfg.parallel, cfg.cluster, cfg.training
    if t.fp8 and t.precision != "bf16":
        raise ConfigError(f"training.fp8: FP8 matmuls run under bf16 mixed precision; set training.precision "
                          f"bf16, not {t.precision}")
    if t.fp8 and c.gpu not in FP8_GPUS:
        raise ConfigError(f"training.fp8: {c.gpu} has no FP8 tensor cores ({', '.join(g for g in FP8_GPUS if g != 'cpu')} "
                          "do; cpu emulates them)")
    if t.fp8 and p.implementation == "torch" and p.tp > 1:
        raise ConfigError("training.fp8: not with torch's tensor parallelism (DTensor weights); use "
                          "parallel.implementation course")
    if t.grad_reduce_dtype is None:
        t.grad_reduce_dtype = "fp32"        # bf16/fp16 training reduces fp32 main gradients; fp32 is fp32
    _positive("training.lr", t.lr)
    if t.min_lr is None:
        t.min_lr = t.lr / 10
    _non_negative("training.min_lr", t.min_lr)
    for name in ("warmup_steps", "steps", "eval_every", "seed", "weight_decay", "grad_clip"):
        _non_negative(f"training.{name}", getattr(t, name))
    _positive("training.eval_batches", t.eval_batches)
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(t, name) < 1:
            raise ConfigError(f"training.{name}: {getattr(t, name)} must be in [0, 1)")
    if t.total_tokens is not None:
        _positive("training.total_tokens", t.total_tokens)
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: {cfg.data.val_fraction} must be in (0, 1)")
    _non_negative("load_balance.backup_workers", cfg.load_balance.backup_workers)
    if cfg.load_balance.policy == "backup_workers" and cfg.load_balance.backup_workers >= p.dp:
        raise ConfigError(f"load_balance.backup_workers: {cfg.load_balance.backup_workers} must be below dp {p.dp}")


def check_faults(cfg: Config) -> None:
    """faults.* (ranks below the world size) and checkpoint.*."""
    f = cfg.faults
    for i, item in enumerate(f.kill):
        if not isinstance(item, dict) or set(item) != {"rank", "step"}:
            raise ConfigError(f"faults.kill[{i}]: expected {{rank: R, step: S}}, got {item!r}")
        for key in ("rank", "step"):
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"faults.kill[{i}].{key}: expected a non-negative integer, got {value!r}")
        if item["rank"] >= cfg.world_size:
            raise ConfigError(f"faults.kill[{i}].rank: {item['rank']} is not below world size {cfg.world_size}")
    for rank, factor in f.slow.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0 or rank >= cfg.world_size:
            raise ConfigError(f"faults.slow: rank {rank!r} is not in [0, {cfg.world_size})")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
            raise ConfigError(f"faults.slow.{rank}: factor {factor!r} must be a number >= 1")
    if f.gpu_mtbf_hours is not None:
        _positive("faults.gpu_mtbf_hours", f.gpu_mtbf_hours)
    if f.weibull_shape is not None:
        _positive("faults.weibull_shape", f.weibull_shape)
    _non_negative("faults.restart_s", f.restart_s)
    if f.nan_step is not None:
        _positive("faults.nan_step", f.nan_step)
    _non_negative("checkpoint.every_steps", cfg.checkpoint.every_steps)
    _positive("checkpoint.keep", cfg.checkpoint.keep)
    if cfg.checkpoint.write_GBps is not None:
        _positive("checkpoint.write_GBps", cfg.checkpoint.write_GBps)


def _positive(name: str, value: Any) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{name}: must be positive, got {value}")


def _non_negative(name: str, value: Any) -> None:
    if value is None or value < 0:
        raise ConfigError(f"{name}: must not be negative, got {value}")


def check_writable(flag: str, path: str) -> None:
    """ConfigError unless `path` can be written: an existing file is opened for appending (not changed), else a
    probe file is created and removed in the nearest existing parent folder (as root, permission bits say
    little: a read-only file system still refuses)."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag}: {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):          # the nearest existing parent must let us create the rest
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag}: cannot write {path}: {folder} is a file")
    try:
        if os.path.exists(path):
            open(path, "a").close()
        else:
            probe = os.path.join(folder, f".llama-course-probe-{os.getpid()}")
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write {path} ({e.strerror})") from None
