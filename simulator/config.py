"""Loading and validating a config: YAML or a dict, `--set` overrides, the rules between fields.

The schema (schema.py) is plain dataclasses, torch-free, so `simulator` can load it where torch is absent
and `llama_course` imports it from here; docs/design.md ("Config schema") describes it.

    from simulator.config import load_config
    cfg = load_config("configs/tiny.yaml", ["parallel.dp=2", "training.steps=20"])
    cfg.world_size, cfg.grad_accum_steps

Every user mistake raises `ConfigError` with one line naming the field; the CLI prints it and exits 2.
There is one validation, `resolve`: the rules between fields, then the capability table (capabilities.py),
which refuses a combination of strategies the runtime does not run. `simulate`, `plan` and `train` all load
configs here, so they accept and refuse alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from typing import Any

import yaml

from simulator import capabilities
from simulator.config_checks import _non_negative, _positive, check_faults, check_training
from simulator.context_parallel import check_context_parallel
from simulator.expert_parallel import check_experts
from simulator.pipeline_parallel import check_stage_layers
from simulator.presets import MODEL_PRESETS, model_preset
from simulator.schema import (  # noqa: F401  (the schema's names are imported from here throughout)
    AGGREGATIONS,
    ARCHS,
    CHECKPOINTING,
    CHOICES,
    COMPRESSIONS,
    FP8_GPUS,
    GPU_NAMES,
    IMPLEMENTATIONS,
    NONFINITE,
    OPTIMIZERS,
    POLICIES,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    SYNCS,
    TOPOLOGIES,
    YAML_ALIASES,
    CheckpointConfig,
    ClusterConfig,
    Config,
    ConfigError,
    DataConfig,
    FaultsConfig,
    LinkConfig,
    LoadBalanceConfig,
    ModelConfig,
    ParallelConfig,
    TrainingConfig,
    field_docs,
    yaml_name,
)

MAX_GPUS = 1 << 20
"""The most devices a config may ask for (the simulator's cluster graph grows with them)."""

# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def load_config(source: Any = None, overrides: list | None = None, runtime: bool = True) -> Config:
    """Build a validated Config from a YAML path, a dict or None (defaults), then `k=v` overrides.

    Raises ConfigError (one line, naming the field) on any bad input. `runtime=False` skips the capability
    table: only for describing published runs of other systems (simulator/validation.py simulates
    Megatron-LM's and DeepSpeed's), never from a command.
    """
    raw = read_raw(source, overrides)
    cfg = _build(Config, raw, "")
    _apply_model_preset(cfg, raw.get("model") or {})
    resolve(cfg, runtime)
    return cfg


def read_raw(source: Any = None, overrides: list | None = None) -> dict:
    """The config's sections as written (a YAML path, a dict or None) with `k=v` overrides applied: not yet
    typed, defaulted or validated (a command that sets more fields itself reads what it needs here first)."""
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = _deep_copy(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a folder; give a YAML config file, e.g. configs/tiny.yaml")
        try:
            with open(path) as f:
                raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file; give a YAML config, e.g. configs/tiny.yaml") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror or type(e).__name__})") from None
        if raw is None:         # an empty file (or only comments) would silently run every default
            raise ConfigError(f"{path}: the config is empty; start from a complete one, e.g. configs/tiny.yaml")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(raw, item)
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.c=value` (value read as YAML) to a raw config dict in place."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set: bad key '{key}'")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value '{text}' is not valid YAML") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a raw mapping into dataclass `cls`, type-checking every field; unknown keys are errors."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    section = prefix.rstrip(".")
    kwargs = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be names, got {key!r}")
        attr = YAML_ALIASES.get((section, key), key)
        if attr not in names:
            visible = [yaml_name(section, n) for n in names]
            close = difflib.get_close_matches(key, visible, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(sorted(visible))})"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
        kwargs[attr] = _coerce(hints[attr], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, name)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name + ".")
    if value is None:
        raise ConfigError(f"{name}: must not be empty")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1.4e12 (no dot or sign) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return value
    return value


def _apply_model_preset(cfg: Config, raw_model: dict) -> None:
    """Fill the model from its preset; fields the user wrote beside the preset win."""
    name = cfg.model.preset
    if name is None:
        return
    if name not in MODEL_PRESETS:
        close = difflib.get_close_matches(name, list(MODEL_PRESETS), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(MODEL_PRESETS)})"
        raise ConfigError(f"model.preset: unknown preset '{name}'{hint}")
    for key, value in model_preset(name).items():
        if key not in raw_model:
            setattr(cfg.model, key, value)


# ---------------------------------------------------------------------------------------------
# validation: cross-field rules, derived degrees
# ---------------------------------------------------------------------------------------------

def resolve(cfg: Config, runtime: bool = True) -> Config:
    """Check every rule and fill derived fields (parallel.dp, cluster.num_gpus). Raises ConfigError.

    The last rule is the capability table: a combination the runtime does not run is refused (`runtime`
    False skips it, see load_config)."""
    m, p, c, t = cfg.model, cfg.parallel, cfg.cluster, cfg.training
    for dotted, allowed in CHOICES.items():
        value = _get(cfg, dotted)
        if value is not None and value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{dotted}: '{value}' is not one of {', '.join(map(str, allowed))}{hint}")

    if m.n_kv_heads is None:
        m.n_kv_heads = m.n_heads
    for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
        _positive(f"model.{name}", getattr(m, name))
    _positive("model.norm_eps", m.norm_eps)
    _positive("model.rope_theta", m.rope_theta)
    if m.dim % m.n_heads:
        raise ConfigError(f"model.n_heads: {m.n_heads} does not divide model.dim {m.dim}")
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_kv_heads: {m.n_kv_heads} does not divide model.n_heads {m.n_heads}")
    if m.arch == "llama" and m.head_dim % 2:
        raise ConfigError(f"model.dim: head dim {m.head_dim} must be even for rotary embeddings")
    _positive("model.weight_group_size", m.weight_group_size)
    if m.weight_bits == 4 and (m.weight_group_size % 2 or m.dim % m.weight_group_size):
        raise ConfigError(f"model.weight_group_size: {m.weight_group_size} must be even and divide model.dim {m.dim} "
                          f"(4-bit weights pack two per byte, one fp16 scale per group)")
    if not 0 <= m.structured_sparsity < 1:
        raise ConfigError(f"model.structured_sparsity: {m.structured_sparsity} must be in [0, 1)")
    _positive("seq_len", cfg.seq_len)

    for name in ("tp", "pp", "cp", "ep", "vpp", "micro_batch_size", "global_batch_size", "num_servers", "local_steps",
                 "powersgd_rank"):
        _positive(f"parallel.{name}", getattr(p, name))
    for name in ("staleness", "bucket_mb"):
        _non_negative(f"parallel.{name}", getattr(p, name))
    if not 0 < p.topk_ratio <= 1:
        raise ConfigError(f"parallel.topk_ratio: {p.topk_ratio} must be in (0, 1]")
    if p.dp is not None:
        _positive("parallel.dp", p.dp)
    if c.num_gpus is not None:
        _positive("cluster.num_gpus", c.num_gpus)
    if c.gpus_per_node is not None:
        _positive("cluster.gpus_per_node", c.gpus_per_node)
    model_par = p.tp * p.pp * p.cp
    cp_x = "cp x " if p.cp > 1 else ""
    if p.dp is None and c.num_gpus is None:
        p.dp = 1
    elif p.dp is None:
        if c.num_gpus % model_par:
            raise ConfigError(f"cluster.num_gpus: {c.num_gpus} is not divisible by {cp_x}tp x pp = {model_par}")
        p.dp = c.num_gpus // model_par
    if c.num_gpus is None:
        c.num_gpus = p.dp * model_par
    if p.dp * model_par != c.num_gpus:
        cp_n = f"{p.cp} x " if p.cp > 1 else ""
        raise ConfigError(f"cluster.num_gpus: {c.num_gpus} != dp x {cp_x}tp x pp = {p.dp} x {cp_n}{p.tp} x {p.pp}")
    if c.num_gpus > MAX_GPUS:
        raise ConfigError(f"cluster.num_gpus: {c.num_gpus} is more than {MAX_GPUS}")
    for link_name in ("intra_node", "inter_node"):
        link = getattr(c, link_name)
        if link.bandwidth_GBps is not None:
            _positive(f"cluster.{link_name}.bandwidth_GBps", link.bandwidth_GBps)
        if link.latency_us is not None:
            _non_negative(f"cluster.{link_name}.latency_us", link.latency_us)
    if c.inter_node.oversubscription is not None and not c.inter_node.oversubscription >= 1:
        raise ConfigError(f"cluster.inter_node.oversubscription: {c.inter_node.oversubscription} must be >= 1")
    for name in ("peak_tflops", "memory_GB", "memory_bandwidth_GBps"):
        if getattr(c, name) is not None:
            _positive(f"cluster.{name}", getattr(c, name))
    if c.memory_reserve_GB is not None:
        _non_negative("cluster.memory_reserve_GB", c.memory_reserve_GB)
    if c.compute_efficiency is not None and not 0 < c.compute_efficiency <= 1:
        raise ConfigError(f"cluster.compute_efficiency: {c.compute_efficiency} must be in (0, 1]")

    if m.n_heads % p.tp:
        raise ConfigError(f"parallel.tp: {p.tp} does not divide model.n_heads {m.n_heads}")
    if m.n_kv_heads % p.tp:
        raise ConfigError(f"parallel.tp: {p.tp} does not divide model.n_kv_heads {m.n_kv_heads}")
    if m.ffn_dim % p.tp:
        raise ConfigError(f"parallel.tp: {p.tp} does not divide model.ffn_dim {m.ffn_dim}")
    if m.vocab_size % p.tp:
        raise ConfigError(f"parallel.tp: {p.tp} does not divide model.vocab_size {m.vocab_size}")
    if p.sequence_parallel and cfg.seq_len % p.tp:
        raise ConfigError(f"parallel.sequence_parallel: tp {p.tp} does not divide seq_len {cfg.seq_len}")
    check_context_parallel(cfg)
    check_experts(cfg)
    uneven = p.first_stage_layers is not None or p.last_stage_layers is not None
    if uneven:
        check_stage_layers(m.n_layers, p)
        if cfg.load_balance.policy == "balanced_stages":
            raise ConfigError("parallel.first_stage_layers: load_balance.policy balanced_stages chooses every "
                              "stage's layers itself; set one or the other")
    elif p.pp * p.vpp > m.n_layers:
        raise ConfigError(f"parallel.pp: {p.pp} x vpp {p.vpp} stages is more than model.n_layers {m.n_layers}")
    elif p.vpp > 1 and m.n_layers % (p.pp * p.vpp):
        raise ConfigError(f"parallel.vpp: {p.vpp} does not divide the {m.n_layers // p.pp if m.n_layers % p.pp == 0 else m.n_layers / p.pp:g} "
                          f"layers per stage (n_layers {m.n_layers}, pp {p.pp}); or set parallel.first_stage_layers / "
                          f"last_stage_layers for uneven chunks")
    if p.vpp > 1 and p.schedule == "zero_bubble":
        raise ConfigError(f"parallel.vpp: {p.vpp}: zero_bubble runs one chunk per rank (ZB-H1); the interleaved "
                          "zero-bubble schedule cannot pair its sends as NCCL needs in the course's engine")
    if p.vpp > 1 and p.schedule != "interleaved_1f1b":
        raise ConfigError(f"parallel.vpp: {p.vpp} needs parallel.schedule interleaved_1f1b, not {p.schedule}")
    per_step = p.dp * p.micro_batch_size
    if p.global_batch_size % per_step:
        raise ConfigError(f"parallel.global_batch_size: {p.global_batch_size} is not divisible by "
                          f"dp x micro_batch_size = {p.dp} x {p.micro_batch_size}")
    n_micro = p.global_batch_size // per_step
    if p.schedule in ("1f1b", "interleaved_1f1b", "zero_bubble") and p.pp > 1 and n_micro < p.pp:
        raise ConfigError(f"parallel.global_batch_size: {p.schedule} needs at least pp = {p.pp} micro-batches "
                          f"per pipeline, got {n_micro} (global_batch_size / (dp x micro_batch_size)); "
                          f"use more, or schedule gpipe")
    rounds = max(1, n_micro // p.pp)
    if p.schedule == "interleaved_1f1b" and p.pp > 1 and n_micro % rounds:
        raise ConfigError(f"parallel.global_batch_size: interleaved 1F1B runs the micro-batches of a pipeline in "
                          f"m // pp equal rounds (torch, Megatron-Core); {n_micro} micro-batches do not split into "
                          f"{rounds} rounds (use {n_micro - n_micro % rounds} or {n_micro - n_micro % rounds + rounds})")
    _positive("parallel.outer_lr", p.outer_lr)
    if not 0 <= p.outer_momentum < 1:
        raise ConfigError(f"parallel.outer_momentum: {p.outer_momentum} must be in [0, 1)")
    if p.lock_free and (p.strategy != "parameter_server" or p.sync not in ("asp", "ssp")):
        raise ConfigError("parallel.lock_free: lock-free updates need strategy parameter_server with sync asp or ssp")
    if p.lock_free and t.optimizer != "sgd":
        raise ConfigError(f"parallel.lock_free: Hogwild updates need training.optimizer sgd, not {t.optimizer} "
                          "(Adam's moments updated by two threads at once race)")

    check_training(cfg)
    check_faults(cfg)
    if runtime:
        capabilities.check(cfg)
    return cfg


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
