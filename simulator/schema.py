"""The config schema: the dataclasses a run description is made of, and the values each field may take.

One config, two engines (docs/design.md, "Config schema"): the simulator reads it to predict, the runtime
reads it to train. Plain dataclasses, torch-free; every field carries a docstring (the string literal under
it), which `llama-course simulate --help` and the docs list. Loading, overrides and the rules between
fields are in config.py; which combinations the runtime can run is in capabilities.py.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A bad config or bad user input: one line, naming the field. The CLI exits with code 2."""


GPU_NAMES = ("a100-40gb", "a100-80gb", "h100-sxm", "h200", "cpu")
FP8_GPUS = ("h100-sxm", "h200", "cpu")
"""Presets with FP8 tensor cores (Hopper), and the cpu profile, on which the runtime emulates FP8."""
ARCHS = ("llama", "gpt")
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b", "zero_bubble")
CHECKPOINTING = ("none", "selective", "selective_op", "full")
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
    n_experts: int = 0
    """Mixture of experts: 0 = a dense MLP per block; E > 0 = every block's MLP is E experts (each an MLP of
    ffn_dim, the arch's kind) and a router (`feed_forward.gate`, E x dim) that sends each token to
    `experts_per_token` of them, their outputs weighted by the softmax of the chosen router logits
    (Mixtral); no token is dropped."""
    experts_per_token: int = 2
    """Experts each token goes to (top-k of the router logits), with n_experts > 0."""
    router_aux_loss: float = 0.01
    """Weight of the load-balancing loss added to the training loss (Switch Transformer: E x sum over
    experts of the share of tokens routed to it x its mean router probability, averaged over the blocks)."""
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
    oversubscription: float | None = None
    """Simulator: a leaf (or rail) switch's NIC ports over its spine uplinks, >= 1 (null = 1, non-blocking;
    2 = 2:1, traffic leaving a leaf shares half the bandwidth its NICs have). Ignored within a node."""


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
    memory_reserve_GB: float | None = None
    """Simulator: GB of each device's memory the run cannot use for its tensors: CUDA context and library
    workspaces, NCCL buffers, the caching allocator's fragmentation. None = the preset's (GPUs: 2 GB + 5% of
    device memory, 6.3 GB of an A100-80GB; cpu: 0)."""
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
    ep: int = 1
    """Expert-parallel degree (model.n_experts > 0): the experts of every block split over ep of the
    data-parallel replicas (dp x cp), each holding n_experts / ep of them; tokens travel to their experts'
    ranks and back by all-to-all. Expert gradients are averaged over the replicas that hold the same experts."""
    cp: int = 1
    """Context-parallel degree: each sequence split over cp ranks (2 cp chunks, rank r holding chunks r and
    2 cp - 1 - r, so causal attention work is even), K and V all-gathered over them before attention and
    their gradients reduce-scattered after (Llama 3's all-gather context parallelism). The cp ranks hold
    the same weights and average gradients with the data-parallel ranks: num_gpus = dp x cp x tp x pp."""
    vpp: int = 1
    """Virtual stages per pipeline rank (interleaved 1F1B)."""
    schedule: str = "1f1b"
    """Pipeline schedule: gpipe | 1f1b | interleaved_1f1b | zero_bubble (ZB-H1: the backward split into
    the input gradient and a deferred weight gradient that fills 1F1B's bubble; one chunk per rank)."""
    first_stage_layers: int | None = None
    """Transformer layers on the first pipeline stage (it also holds the embedding); null = an even split.
    The layers the first and last stage do not take are split evenly over the middle stages; with vpp > 1
    a stage's layers are dealt over its chunks, which may then be uneven (Llama 3 405B: 126 layers on pp 16
    x vpp 8 with 7 on the first and last stage, whose outer chunks hold only the embedding and the head)."""
    last_stage_layers: int | None = None
    """Transformer layers on the last pipeline stage (it also holds the output head and the loss); null =
    an even split. See first_stage_layers."""
    zero_stage: int = 0
    """0 none, 1 optimizer state sharded, 2 + gradients, 3 + parameters (FSDP)."""
    sequence_parallel: bool = False
    """Split norm/dropout activations along the sequence across the tensor-parallel group."""
    micro_batch_size: int = 1
    """Sequences per micro-batch on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step, over all ranks and micro-batches."""
    activation_checkpointing: str = "none"
    """none | selective (recompute attention scores) | selective_op (torchtitan's per-op policy: also every second
    linear matmul of a block, wk, wo and w3) | full (recompute each block)."""
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
    fp8: bool = False
    """FP8 matmuls in the transformer blocks' linear layers (per-tensor dynamic scales, e4m3 weights and
    activations, e5m2 gradients: torchao's tensorwise recipe); norms, attention, the loss, the output head
    and the optimizer stay in `precision`, which must be bf16. Needs FP8 tensor cores (h100-sxm, h200); on
    the `cpu` profile the runtime emulates it (quantized operands, fp32 products) for its numerics. MFU
    stays counted against the bf16 peak."""
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
        """Processes the runtime launches: dp x cp x tp x pp, plus parameter servers."""
        extra = self.parallel.num_servers if self.parallel.strategy == "parameter_server" else 0
        return self.replicas * self.parallel.tp * self.parallel.pp + extra

    @property
    def replicas(self) -> int:
        """Ranks holding one copy of a stage's weights shard, which average their gradients: dp x cp."""
        return self.parallel.dp * self.parallel.cp

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
YAML_ALIASES = {("checkpoint", "async"): "async_save"}


def yaml_name(section: str, attr: str) -> str:
    """The YAML key of a dataclass attribute (`async` for checkpoint.async_save: a Python keyword)."""
    for (sec, key), a in YAML_ALIASES.items():
        if sec == section and a == attr:
            return key
    return attr


def field_docs(cls: type = Config) -> dict:
    """Map 'section.field' -> docstring, read from the attribute docstrings of the dataclasses (for --help and docs)."""
    out = {}

    def walk(klass: type, prefix: str) -> None:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                name = node.target.id
                out[prefix + yaml_name(prefix.rstrip("."), name)] = " ".join(str(nxt.value.value).split())
        for f in dataclasses.fields(klass):
            sub = typing.get_type_hints(klass)[f.name]
            if dataclasses.is_dataclass(sub):
                walk(sub, prefix + f.name + ".")

    walk(cls, "")
    return out
