"""One config, two engines: the run description read by the simulator and the runtime.

The schema is the one in DESIGN.md ("One config, two engines"). It is plain dataclasses, torch-free, so
`simulator` can load it where torch is absent and `llama_course` imports it from here. Every field carries
a docstring (the string literal under it); `llama-course simulate --help` and the docs list them.

    from simulator.config import load_config
    cfg = load_config("configs/tiny.yaml", ["parallel.dp=2", "training.steps=20"])
    cfg.world_size, cfg.grad_accum_steps

Every user mistake raises `ConfigError` with one line naming the field; the CLI prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from simulator.presets import MODEL_PRESETS, model_preset


class ConfigError(ValueError):
    """A bad config or bad user input: one line, naming the field. The CLI exits with code 2."""


GPU_NAMES = ("a100-40gb", "a100-80gb", "h100-sxm", "h200", "cpu")
ARCHS = ("llama", "gpt")
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
CHECKPOINTING = ("none", "selective", "full")
IMPLEMENTATIONS = ("course", "torch")
STRATEGIES = ("collective", "parameter_server")
SYNCS = ("bsp", "asp", "ssp", "local_sgd")
COMPRESSIONS = ("none", "fp16", "bf16", "topk", "powersgd")
PRECISIONS = ("fp32", "fp16", "bf16")
OPTIMIZERS = ("sgd", "adamw", "lars", "lamb")
POLICIES = ("none", "dynamic_batch", "backup_workers", "balanced_stages")
TOPOLOGIES = ("fat_tree", "rail_optimized")
AGGREGATIONS = ("mean", "sum", "ema")
NONFINITE = ("skip", "stop")

# field name -> allowed values, checked on load
CHOICES = {
    "model.arch": ARCHS,
    "model.weight_bits": (16, 8, 4),
    "cluster.gpu": GPU_NAMES,
    "cluster.inter_node.topology": TOPOLOGIES,
    "parallel.schedule": SCHEDULES,
    "parallel.activation_checkpointing": CHECKPOINTING,
    "parallel.implementation": IMPLEMENTATIONS,
    "parallel.strategy": STRATEGIES,
    "parallel.sync": SYNCS,
    "parallel.compression": COMPRESSIONS,
    "parallel.aggregation": AGGREGATIONS,
    "parallel.zero_stage": (0, 1, 2, 3),
    "training.precision": PRECISIONS,
    "training.grad_reduce_dtype": PRECISIONS,
    "training.optimizer": OPTIMIZERS,
    "training.on_nonfinite": NONFINITE,
    "load_balance.policy": POLICIES,
}


@dataclass
class ModelConfig:
    preset: str | None = "tiny"
    """Named shape (`tiny`, `small`, `llama-7b`, `llama2-70b`, `llama3-405b`, `gpt3-175b`, ...); fields given
    beside it override the preset's values."""
    arch: str = "llama"
    """`llama` (RMSNorm, SwiGLU, RoPE, GQA) or `gpt` (LayerNorm, GELU MLP of 4h, learned positions)."""
    dim: int = 64
    """Hidden size h."""
    n_layers: int = 4
    """Number of transformer blocks l."""
    n_heads: int = 4
    """Query heads; dim must divide by it."""
    n_kv_heads: int | None = 2
    """Key/value heads (grouped-query attention); equal to n_heads is multi-head attention."""
    ffn_dim: int = 192
    """Hidden size of the MLP (SwiGLU: the width of w1 and w3)."""
    vocab_size: int = 512
    """Vocabulary size V; the built-in tokenizer is trained to this size."""
    tie_embeddings: bool = False
    """Share the input embedding with the output head."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm / LayerNorm."""
    rope_theta: float = 10000.0
    """Base of the rotary embedding frequencies (LLaMA 1/2: 1e4, LLaMA 3: 5e5)."""
    weight_bits: int | None = None
    """Simulator: bits per stored weight, 16 | 8 | 4 (weight-only quantization with fp16 scales, as
    `llama-course compress --method int8|int4` writes); None = the training precision. Changes the weights'
    memory and all-gather bytes, not gradients, optimizer state or FLOPs (simulator/model_compression.py)."""
    weight_group_size: int = 64
    """Simulator: weights per fp16 scale when weight_bits is 4 (int8 keeps one scale per output channel)."""
    structured_sparsity: float = 0.0
    """Simulator: fraction of every block's FFN channels removed by structured pruning, in [0, 1): the
    narrower model's parameters, FLOPs, activations and communication are simulated."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass
class LinkConfig:
    bandwidth_GBps: float | None = None
    """Bandwidth per direction per GPU, GB/s (1e9 bytes). None takes the GPU preset's value."""
    latency_us: float | None = None
    """One-way latency in microseconds. None takes the GPU preset's value."""
    topology: str | None = None
    """Inter-node fabric: `fat_tree` or `rail_optimized` (ignored within a node)."""


@dataclass
class ClusterConfig:
    gpu: str = "cpu"
    """Accelerator preset: a100-40gb | a100-80gb | h100-sxm | h200 | cpu (this machine, as `bench` measured it)."""
    num_gpus: int | None = None
    """Total devices (processes on CPU). num_gpus = dp x tp x pp; give this or parallel.dp."""
    gpus_per_node: int | None = None
    """Devices per node (8 for the GPU presets; all processes on one node for cpu)."""
    intra_node: LinkConfig = field(default_factory=LinkConfig)
    """Link between devices of one node (NVLink/NVSwitch; shared memory on cpu)."""
    inter_node: LinkConfig = field(default_factory=LinkConfig)
    """Link between nodes (InfiniBand/RoCE NICs), and the fabric topology."""
    peak_tflops: float | None = None
    """Override the dense peak TFLOP/s for the run's precision."""
    memory_GB: float | None = None
    """Override device memory in GB."""
    memory_bandwidth_GBps: float | None = None
    """Override device memory (HBM) bandwidth in GB/s."""
    compute_efficiency: float | None = None
    """Override the calibrated fraction of peak that large matmuls reach (0..1]."""


@dataclass
class ParallelConfig:
    dp: int | None = None
    """Data-parallel degree (workers, for a parameter server). num_gpus = dp x tp x pp; give this or num_gpus."""
    tp: int = 1
    """Tensor-parallel degree (Megatron column/row split)."""
    pp: int = 1
    """Pipeline-parallel degree (stages)."""
    vpp: int = 1
    """Virtual stages per pipeline rank (interleaved 1F1B)."""
    schedule: str = "1f1b"
    """Pipeline schedule: gpipe | 1f1b | interleaved_1f1b."""
    zero_stage: int = 0
    """0 none, 1 optimizer state sharded, 2 + gradients, 3 + parameters (FSDP)."""
    sequence_parallel: bool = False
    """Split norm/dropout activations along the sequence across the tensor-parallel group."""
    micro_batch_size: int = 1
    """Sequences per micro-batch on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step, over all ranks and micro-batches."""
    activation_checkpointing: str = "none"
    """none | selective (recompute attention scores) | full (recompute each block)."""
    implementation: str = "course"
    """course (this package's own code) | torch (DDP, FSDP2, DTensor, torch.distributed.pipelining)."""
    bucket_mb: float = 25.0
    """Data-parallel gradient bucket size in MB; 0 = one all-reduce per tensor after backward."""
    overlap: bool = True
    """Overlap gradient communication with the backward pass."""
    strategy: str = "collective"
    """How gradients meet: collective (all-reduce) | parameter_server."""
    num_servers: int = 1
    """Parameter-server shards (extra processes beside the dp workers)."""
    aggregation: str = "mean"
    """Parameter server: how pushed gradients are combined: mean | sum | ema."""
    sync: str = "bsp"
    """bsp (wait for all) | asp (never wait) | ssp (bounded staleness) | local_sgd (average every local_steps)."""
    staleness: int = 0
    """SSP bound: how many versions the fastest worker may run ahead."""
    local_steps: int = 1
    """local_sgd / DiLoCo: inner optimizer steps between averages."""
    outer_lr: float = 1.0
    """local_sgd: outer learning rate applied to the averaged change (1 with no momentum = plain averaging;
    DiLoCo uses 0.7 with outer_momentum 0.9)."""
    outer_momentum: float = 0.0
    """local_sgd: Nesterov momentum of the outer optimizer (0 = plain local SGD, 0.9 = DiLoCo)."""
    lock_free: bool = False
    """Parameter server, asp/ssp: apply pushes without the shard lock (Hogwild); needs training.optimizer sgd."""
    compression: str = "none"
    """Gradient compression on the wire: none | fp16 | bf16 | topk | powersgd."""
    topk_ratio: float = 0.01
    """Fraction of gradient entries sent by top-k compression."""
    powersgd_rank: int = 4
    """Rank r of PowerSGD's low-rank approximation."""


@dataclass
class TrainingConfig:
    precision: str = "bf16"
    """fp32 | fp16 | bf16. The runtime uses autocast on GPU and computes in fp32 on CPU."""
    grad_reduce_dtype: str | None = None
    """Dtype of the data-parallel gradient reduction (all-reduce, reduce-scatter) and of the gradient buffer
    it reduces: fp32 | bf16 | fp16. null = fp32: for bf16/fp16 training the fp32 main gradients of Megatron-LM
    (Llama 3 reduces in fp32 too), for fp32 training the training precision; filled in when the config is
    loaded. bf16 halves the bytes (and loses precision in the sum over ranks).
    The simulator prices its bytes on the wire and in memory; the runtime reads the same field."""
    optimizer: str = "adamw"
    """sgd (with momentum) | adamw | lars | lamb."""
    lr: float = 3.0e-4
    """Peak learning rate (after warmup)."""
    min_lr: float | None = None
    """Learning rate at the end of the cosine decay (default lr / 10)."""
    warmup_steps: int = 10
    """Linear warmup steps before the cosine decay."""
    weight_decay: float = 0.1
    """Decoupled weight decay (AdamW, LAMB) or L2 (SGD, LARS)."""
    beta1: float = 0.9
    """Adam first-moment decay (or SGD momentum)."""
    beta2: float = 0.95
    """Adam second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    steps: int = 100
    """Runtime: optimizer steps to run."""
    seed: int = 0
    """Seed of initialisation, data order and sampling."""
    total_tokens: float | None = None
    """Simulator: tokens of the whole run; gives time_to_train_s."""
    eval_every: int = 0
    """Validation loss every N steps (0 = only at the end)."""
    eval_batches: int = 4
    """Batches of the held-out split per validation."""
    compile: bool = False
    """Runtime: torch.compile the model (GPU speed; the first steps pay for compilation)."""
    on_nonfinite: str = "skip"
    """A non-finite loss or gradient: skip the step, or stop the run."""
    flash_attention: bool | None = None
    """Simulator: fused attention kernel (FlashAttention: no s x s scores in memory) or eager attention
    (scores, softmax and dropout materialised, as Megatron-LM 2021). None = fused for llama, eager for gpt."""
    init_from: str | None = None
    """Runtime: start from the weights of this checkpoint folder (for example one `llama-course compress`
    wrote; quantized weights are dequantized, pruned shapes and zeros kept) instead of a random
    initialisation; the optimizer starts fresh. Its model must equal `model` (train with its config.yaml)."""


@dataclass
class DataConfig:
    corpus: str = "builtin"
    """builtin (ships with Python and the package) | a text file or folder of .txt | a folder of .bin token shards
    | synthetic (random tokens, for throughput runs only)."""
    val_fraction: float = 0.05
    """Share of the corpus held out for validation."""


@dataclass
class LoadBalanceConfig:
    policy: str = "none"
    """none | dynamic_batch | backup_workers | balanced_stages."""
    backup_workers: int = 1
    """backup_workers policy: how many slowest gradients a step may drop."""


@dataclass
class FaultsConfig:
    kill: list = field(default_factory=list)
    """Runtime: [{rank: 1, step: 7}] SIGKILLs that rank at that step, first attempt only."""
    slow: dict = field(default_factory=dict)
    """{rank: factor}: that rank's compute runs factor times slower."""
    gpu_mtbf_hours: float | None = None
    """Simulator: mean time between failures of one GPU, in hours; failures are drawn per GPU."""
    weibull_shape: float | None = None
    """Simulator: Weibull shape k for time to failure (None = exponential)."""
    restart_s: float = 600.0
    """Simulator: time to detect a failure, replace the node and restart the job, seconds."""
    nan_step: int | None = None
    """Runtime: make the loss of this step (1-based) NaN on every rank, to exercise training.on_nonfinite."""


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Save every N optimizer steps (0 = never)."""
    async_save: bool = False
    """Write checkpoints in the background, overlapped with training (key `async` in YAML)."""
    keep: int = 2
    """How many recent checkpoints to keep on disk."""
    write_GBps: float | None = None
    """Simulator: checkpoint write bandwidth per node in GB/s (None = preset)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shape (a preset, or every field)."""
    seq_len: int = 128
    """Tokens per sequence."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Devices and the network between them."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How the run is split over devices."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where tokens come from."""
    load_balance: LoadBalanceConfig = field(default_factory=LoadBalanceConfig)
    """Straggler and imbalance handling."""
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    """Injected failures and slowdowns; failure rates for the simulator."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def dp(self) -> int:
        return self.parallel.dp

    @property
    def world_size(self) -> int:
        """Processes the runtime launches: dp x tp x pp, plus parameter servers."""
        extra = self.parallel.num_servers if self.parallel.strategy == "parameter_server" else 0
        return self.parallel.dp * self.parallel.tp * self.parallel.pp + extra

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step on one data-parallel rank."""
        return self.parallel.global_batch_size // (self.parallel.dp * self.parallel.micro_batch_size)

    @property
    def tokens_per_step(self) -> int:
        return self.parallel.global_batch_size * self.seq_len

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["checkpoint"]["async"] = d["checkpoint"].pop("async_save")
        return d


# YAML keys that differ from the Python attribute (a keyword in Python)
_ALIASES = {("checkpoint", "async"): "async_save"}


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def load_config(source: Any = None, overrides: list | None = None) -> Config:
    """Build a validated Config from a YAML path, a dict or None (defaults), then `k=v` overrides.

    Raises ConfigError (one line, naming the field) on any bad input.
    """
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = _deep_copy(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = _build(Config, raw, "")
    _apply_model_preset(cfg, raw.get("model") or {})
    resolve(cfg)
    return cfg


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
        attr = _ALIASES.get((section, key), key)
        if attr not in names:
            visible = [_yaml_name(section, n) for n in names]
            close = difflib.get_close_matches(key, visible, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(sorted(visible))})"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
        kwargs[attr] = _coerce(hints[attr], value, f"{prefix}{key}")
    return cls(**kwargs)


def _yaml_name(section: str, attr: str) -> str:
    for (sec, key), a in _ALIASES.items():
        if sec == section and a == attr:
            return key
    return attr


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

def resolve(cfg: Config) -> Config:
    """Check every rule and fill derived fields (parallel.dp, cluster.num_gpus). Raises ConfigError."""
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

    for name in ("tp", "pp", "vpp", "micro_batch_size", "global_batch_size", "num_servers", "local_steps",
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
    model_par = p.tp * p.pp
    if p.dp is None and c.num_gpus is None:
        p.dp = 1
    elif p.dp is None:
        if c.num_gpus % model_par:
            raise ConfigError(f"cluster.num_gpus: {c.num_gpus} is not divisible by tp x pp = {model_par}")
        p.dp = c.num_gpus // model_par
    if c.num_gpus is None:
        c.num_gpus = p.dp * model_par
    if p.dp * model_par != c.num_gpus:
        raise ConfigError(f"cluster.num_gpus: {c.num_gpus} != dp x tp x pp = {p.dp} x {p.tp} x {p.pp}")
    for link_name in ("intra_node", "inter_node"):
        link = getattr(c, link_name)
        if link.bandwidth_GBps is not None:
            _positive(f"cluster.{link_name}.bandwidth_GBps", link.bandwidth_GBps)
        if link.latency_us is not None:
            _non_negative(f"cluster.{link_name}.latency_us", link.latency_us)
    for name in ("peak_tflops", "memory_GB", "memory_bandwidth_GBps"):
        if getattr(c, name) is not None:
            _positive(f"cluster.{name}", getattr(c, name))
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
    if p.pp * p.vpp > m.n_layers:
        raise ConfigError(f"parallel.pp: {p.pp} x vpp {p.vpp} stages is more than model.n_layers {m.n_layers}")
    if p.vpp > 1 and m.n_layers % (p.pp * p.vpp):
        raise ConfigError(f"parallel.vpp: {p.vpp} does not divide the {m.n_layers // p.pp if m.n_layers % p.pp == 0 else m.n_layers / p.pp:g} "
                          f"layers per stage (n_layers {m.n_layers}, pp {p.pp})")
    if p.vpp > 1 and p.schedule != "interleaved_1f1b":
        raise ConfigError(f"parallel.vpp: {p.vpp} needs parallel.schedule interleaved_1f1b, not {p.schedule}")
    per_step = p.dp * p.micro_batch_size
    if p.global_batch_size % per_step:
        raise ConfigError(f"parallel.global_batch_size: {p.global_batch_size} is not divisible by "
                          f"dp x micro_batch_size = {p.dp} x {p.micro_batch_size}")
    n_micro = p.global_batch_size // per_step
    if p.schedule in ("1f1b", "interleaved_1f1b") and p.pp > 1 and n_micro < p.pp:
        raise ConfigError(f"parallel.global_batch_size: {p.schedule} needs at least pp = {p.pp} micro-batches "
                          f"per pipeline, got {n_micro} (global_batch_size / (dp x micro_batch_size)); "
                          f"use more, or schedule gpipe")
    if p.schedule == "interleaved_1f1b" and p.pp > 1 and n_micro % p.pp:
        raise ConfigError(f"parallel.global_batch_size: interleaved 1F1B needs micro-batches per pipeline "
                          f"({n_micro}) divisible by pp {p.pp}")
    if p.strategy == "parameter_server" and (p.tp > 1 or p.pp > 1):
        raise ConfigError("parallel.strategy: parameter_server runs data parallel only (tp = pp = 1)")
    if p.sync != "bsp" and p.strategy != "parameter_server" and p.sync != "local_sgd":
        raise ConfigError(f"parallel.sync: {p.sync} needs parallel.strategy parameter_server")
    _positive("parallel.outer_lr", p.outer_lr)
    if not 0 <= p.outer_momentum < 1:
        raise ConfigError(f"parallel.outer_momentum: {p.outer_momentum} must be in [0, 1)")
    if p.lock_free and (p.strategy != "parameter_server" or p.sync not in ("asp", "ssp")):
        raise ConfigError("parallel.lock_free: lock-free updates need strategy parameter_server with sync asp or ssp")
    if p.lock_free and t.optimizer != "sgd":
        raise ConfigError(f"parallel.lock_free: Hogwild updates need training.optimizer sgd, not {t.optimizer} "
                          "(Adam's moments updated by two threads at once race)")

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
    return cfg


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _positive(name: str, value: Any) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{name}: must be positive, got {value}")


def _non_negative(name: str, value: Any) -> None:
    if value is None or value < 0:
        raise ConfigError(f"{name}: must not be negative, got {value}")


def field_docs(cls: type = Config) -> dict:
    """Map 'section.field' -> docstring, read from the attribute docstrings of the dataclasses (for --help and docs)."""
    import ast
    import inspect
    import textwrap

    out = {}

    def walk(klass: type, prefix: str) -> None:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                name = node.target.id
                out[prefix + _yaml_name(prefix.rstrip("."), name)] = " ".join(str(nxt.value.value).split())
        for f in dataclasses.fields(klass):
            sub = typing.get_type_hints(klass)[f.name]
            if dataclasses.is_dataclass(sub):
                walk(sub, prefix + f.name + ".")

    walk(cls, "")
    return out
