"""Data parallel: gradient buckets overlapped with backward, and ZeRO-1/2/3, on a rank's comm stream.

Every data-parallel replica computes gradients on its own micro-batches; before the optimizer step they
are averaged over the dp ranks of the same model shard. Per step and GPU, with Psi parameters on the GPU,
g bytes per gradient element (`training.grad_reduce_dtype`, fp32 by default), e per weight, m micro-batches:

    plain / ZeRO-0   all-reduce Psi g bytes            each rank sends 2 (dp-1)/dp Psi g
    ZeRO-1/2/3       gradients reduce-scattered (the course's ZeRO-1: all-reduced), optimizer on Psi/dp,
                     and the new weights all-gathered: when and how often is what the systems differ in.

Which system's rules (`zero_semantics`; `parallel.implementation` picks course or fsdp2, the Python API
also takes `system="deepspeed"` or `"fsdp_sharded"`, and so does a validation row: configs/validation/):

    system     gradients under accumulation             weights                                  sees
    course     accumulated whole (p.grad) over the m    ZeRO-1/2: all-gather of Psi e after the  this package's
               micro-batches, reduced once after the    optimizer; ZeRO-3: each block gathered    engines
               last                                     just in time before its forward and its
                                                        backward (hooks), every micro-batch
    fsdp2      reduce-scattered after every micro-      ZeRO-1/2 (reshard_after_forward=False):   torch: DDP,
               batch's backward (FSDP's default, as     each block gathered before its forward,   FSDP2
               torchtitan and Composer run it); under   every micro-batch (under a pipeline only
               a pipeline accumulated whole and
               reduced once (torch's schedules)
                                                        the first's: torch's schedules keep them
                                                        gathered); ZeRO-3: also before its
                                                        backward; the next block's gather is
                                                        prefetched
    fsdp_      reduce-scattered after every micro-      as fsdp2 (under a pipeline gathered in    FSDP with
    sharded    batch's backward, under a pipeline too   the first micro-batch's forward and       sharded
               (FSDP's sharded accumulation: Llama 3's  kept, Llama 3's "no reshard after        accumulation
               fp32 reduce-scatter per micro-batch)     forward")                                 (Llama 3)
    deepspeed  reduce-scattered after every micro-      ZeRO-1/2: all-gather after the optimizer; DeepSpeed
               batch into the rank's shard (ZeRO-2/3);  ZeRO-3: gathered per block, prefetched;
               ZeRO-1 all-reduces once                  its pipeline engine's sends block the
                                                        sender (`streams`)
    deepspeed_ as deepspeed; at ZeRO-3 every data-      ZeRO-3: each block gathered just in       DeepSpeed
    2021       parallel collective takes DEEPSPEED_     time (every all_gather synchronised the   0.3/0.4
               2021_ZERO3_SLOWDOWN x NCCL's time        device), at the same slowdown             (2021)

So ZeRO-2/3 cannot have both cheap sides under accumulation: one reduction per step holds whole gradients
(memory.py counts them), sharded gradients cost m reductions. (This package's own FSDP2 engine calls
set_requires_gradient_sync(False) until the last micro-batch, the no-sync variant; `system="fsdp2"` prices
FSDP as real runs use it, the course's engines are `system="course"`.)

One overlap rule for every collective: a collective runs on the rank's comm stream beside the compute
stream and hides behind the compute issued while it runs; what it outlasts is exposed. Gradient buckets
start when the backward has produced them (`gradient_sync`); a prefetched gather starts one block ahead,
so of n gathers of g seconds behind blocks of c seconds, g + (n - 1) max(0, g - c) is exposed (the first
has nothing to hide behind); a just-in-time gather, or one issued after the optimizer, hides behind
nothing (`exposed_gathers`).

Bucketing (`parallel.bucket_mb`): gradients are grouped into buckets of that size; a bucket is reduced as
soon as the backward pass has produced all of it, while the backward continues (the final backward of each
pipeline chunk yields the gradients; under deepspeed every backward does). With `overlap: false` (or
bucket_mb 0, one collective per tensor) everything starts after the backward. Gradient compression scales
the bytes on the wire (`compression_factor`).

Seed questions 1, 7, 11, 22, 26. Runs with
`llama-course simulate configs/llama-7b-a100.yaml --set parallel.zero_stage=3 --trace zero3.json`.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator import spec
from simulator.workload import DTYPE_BYTES

SYSTEMS = ("course", "fsdp2", "fsdp_sharded", "deepspeed", "deepspeed_2021")
DEEPSPEED = ("deepspeed", "deepspeed_2021")

DEEPSPEED_2021_ZERO3_SLOWDOWN = 6.4
"""How many times NCCL's time DeepSpeed 0.3/0.4's ZeRO-3 collectives took (spring 2021, the version in
Megatron-LM 2021's Table 2). It gathered and reduce-scattered parameter by parameter, each all_gather calling
torch.cuda.synchronize() ("the async version is not async at all", DeepSpeed PR #1188) and copying its output
once more; on 8 NVLink A100s a 5B model's gathers took about 420 ms against NCCL's ~40 ms (DeepSpeed issue
#1174). CALIBRATED: chosen on the three 175B ZeRO-3 rows of Megatron-LM 2021 Table 2 (the value minimising
their largest error, configs/validation/megatron-2021-table2-zero3-175b.yaml); the 530B rows are validation.
Only `system="deepspeed_2021"` at ZeRO-3 uses it: later DeepSpeed coalesces and prefetches (`deepspeed`)."""


@dataclass(frozen=True)
class ZeroSemantics:
    """How one data-parallel system moves gradients and weights at one ZeRO stage."""

    system: str
    grad_collective: str            # all_reduce | reduce_scatter
    reduce_every_micro_batch: bool  # False: gradients accumulate whole and are reduced after the last
    gather: str                     # none | after_step | first_forward | forward | forward_backward: when
                                    # weights are all-gathered (forward: in every micro-batch's)
    prefetch: bool                  # gathers issued one block ahead (True) or just in time
    comm_slowdown: float = 1.0      # its ZeRO-3 collectives take this many times NCCL's time (host-bound)

    def shards_grads(self, zero_stage: int) -> bool:
        """Gradients kept as this rank's shard between steps: ZeRO-2/3, and FSDP2's ZeRO-1 (FSDP shards
        gradients whatever it does with the weights)."""
        return zero_stage >= 2 or (zero_stage == 1 and self.system in ("fsdp2", "fsdp_sharded"))

    def holds_whole_grads(self, zero_stage: int, n_micro: int) -> bool:
        """A sharded-gradient stage that still holds every gradient unsharded during the step: it
        accumulates over several micro-batches before its one reduction."""
        return self.shards_grads(zero_stage) and not self.reduce_every_micro_batch and n_micro > 1


def zero_semantics(cfg, system: str | None = None) -> ZeroSemantics:
    """The rules of `system` (course | fsdp2 | fsdp_sharded | deepspeed | deepspeed_2021; None: fsdp2 for `parallel.implementation: torch`,
    course otherwise) at the config's ZeRO stage; see the table in the module docstring."""
    p = cfg.parallel
    system = system or ("fsdp2" if p.implementation == "torch" else "course")
    if system not in SYSTEMS:
        raise ValueError(f"unknown data-parallel system {system!r} (known: {', '.join(SYSTEMS)})")
    z = p.zero_stage
    if z == 0 or (p.dp or 1) * p.cp <= 1:
        return ZeroSemantics(system, "all_reduce", False, "none", False)
    if system in ("fsdp2", "fsdp_sharded"):
        # FSDP syncs gradients in every backward (torchtitan, Composer: sharded accumulation); under a
        # pipeline torch.distributed.pipelining accumulates them unsharded and keeps the weights gathered
        # from the first micro-batch's forward to the last one's backward, reducing once (fsdp2), where
        # Llama 3's FSDP keeps the weights so but still reduce-scatters every micro-batch (fsdp_sharded)
        piped = p.pp > 1
        once = "first_forward" if piped else "forward"
        every = not piped or system == "fsdp_sharded"
        return ZeroSemantics(system, "reduce_scatter", every, "forward_backward" if z == 3 else once, True)
    if system in DEEPSPEED:
        if z == 1:
            return ZeroSemantics(system, "all_reduce", False, "after_step", False)
        if z == 3 and system == "deepspeed_2021":   # synchronous per-parameter gathers, host-bound collectives
            return ZeroSemantics(system, "reduce_scatter", True, "forward_backward", False, DEEPSPEED_2021_ZERO3_SLOWDOWN)
        return ZeroSemantics(system, "reduce_scatter", True, "forward_backward" if z == 3 else "after_step", z == 3)
    kind = "all_reduce" if z == 1 else "reduce_scatter"
    return ZeroSemantics(system, kind, False, "forward_backward" if z == 3 else "after_step", False)


def exposed_gathers(n_blocks: float, compute_s: float, gather_s: float, prefetch: bool) -> float:
    """Seconds of n_blocks weight gathers of gather_s each that the compute (compute_s per block) does not
    hide: prefetched one block ahead, the first is exposed and each later one by what outlasts the block
    before it; just in time, all of them."""
    if n_blocks <= 0 or gather_s <= 0:
        return 0.0
    if not prefetch:
        return n_blocks * gather_s
    return gather_s + (n_blocks - 1) * max(0.0, gather_s - compute_s)


def compression_factor(cfg, matrices=None) -> float:
    """Bytes on the wire over uncompressed gradient bytes for `parallel.compression`."""
    p = cfg.parallel
    e = grad_bytes_per_param(cfg)
    if p.compression in ("fp16", "bf16"):
        return 2.0 / e if e > 2 else 1.0
    if p.compression == "topk":
        # top-k picks different entries on every rank, so the sparse pieces cannot be summed on the way
        # (no ring all-reduce): they are all-gathered, (N-1) x k x (value + int32 index) bytes per rank,
        # against the dense ring's 2 (N-1)/N x n x e. The ratio grows with N: at N = 64 and 1% top-k in
        # fp32 it is 0.64 of the dense bytes, not 0.02 (beyond 1 / (N ratio) ranks, top-k loses).
        n_ranks = max((p.dp or 1) * p.cp, 2)
        return n_ranks * p.topk_ratio * (e + 4) / (2 * e)
    if p.compression == "powersgd":
        m = cfg.model
        mats = matrices or [(m.dim, m.dim), (m.dim, m.ffn_dim)]
        r = p.powersgd_rank
        return min(1.0, sum(r * (a + b) for a, b in mats) / sum(a * b for a, b in mats))
    return 1.0


def grad_bytes_per_param(cfg) -> float:
    """Bytes per gradient element of the reduction, before compression: `training.grad_reduce_dtype`
    (4 for fp32, the default, also under bf16/fp16 training; 2 for bf16/fp16)."""
    return float(DTYPE_BYTES[cfg.training.grad_reduce_dtype or "fp32"])


DEEPSPEED_REDUCE_BUCKET = 5e8
"""Elements per DeepSpeed ZeRO reduce bucket (its `reduce_bucket_size` default, 500M)."""


def reduce_bucket_mb(cfg, sem, block_params: float) -> float:
    """The bucket cap, in MiB of fp32 gradient buffer (`bucket_sizes`), as the system issues its gradient
    collectives: DDP and the course's engines `parallel.bucket_mb`; FSDP (ZeRO >= 1 under fsdp2 /
    fsdp_sharded) one reduce-scatter per block (an FSDP unit's gradients); DeepSpeed's ZeRO buckets of
    DEEPSPEED_REDUCE_BUCKET elements."""
    p = cfg.parallel
    z = p.zero_stage if (p.dp or 1) * p.cp > 1 else 0
    if z >= 1 and sem.system in ("fsdp2", "fsdp_sharded"):
        return block_params * 4 / spec.BUCKET_UNIT_BYTES
    if z >= 1 and sem.system in DEEPSPEED:
        return DEEPSPEED_REDUCE_BUCKET * 4 / spec.BUCKET_UNIT_BYTES
    return p.bucket_mb


def bucket_sizes(tensor_numels: list, bucket_mb: float, element_bytes: int = 4) -> list:
    """Bytes of each gradient bucket of a chunk whose parameter tensors have `tensor_numels` elements (in
    registration order), in the order backward fills them: the runtime's own plan (simulator/spec.py's
    `bucket_plan`: MiB, a first bucket of at most 1 MiB, bucket_mb 0 one tensor per bucket), over its fp32
    gradient buffers (element_bytes 4)."""
    nbytes = [n * element_bytes for n in reversed(tensor_numels)]
    return [sum(nbytes[i] for i in bucket) for bucket in spec.bucket_plan(nbytes, bucket_mb)]


def bucket_ready(tensor_numels: list, bucket_mb: float, backward_work: list, element_bytes: int = 4) -> list:
    """Fraction of a chunk's backward after which each bucket of `bucket_sizes` is ready: its last tensor's
    gradient exists once the backward has done the work of that tensor and of every tensor produced before
    it (`backward_work`, registration order: `spec.stage_tensor_backward_work`). Not the bucket's share of
    the bytes: an embedding table is a tenth of a small model's gradient bytes but its backward comes last and
    takes no time, so the buckets before it are ready later than their bytes say (a measured trace of
    `configs/tiny.yaml` on 2 processes: its first bucket, every tensor but the embedding, launched 0.4 ms
    before the end of a 15 ms backward, not the 1.8 ms that bytes would say)."""
    nbytes = [n * element_bytes for n in reversed(tensor_numels)]
    work = list(reversed(backward_work))
    total, done, out, i = sum(work), 0.0, [], 0
    for bucket in spec.bucket_plan(nbytes, bucket_mb):
        while i <= bucket[-1]:
            done += work[i]
            i += 1
        out.append(done / total if total else 1.0)
    return out


def gradient_sync(ready: list, overlap: bool, comm_time, compute_end: float) -> tuple:
    """Run a rank's gradient buckets through its comm stream, one collective after another.

    ready: [(time the bucket's gradients exist, bytes)] in production order; comm_time(bytes, back_to_back)
    -> seconds, back_to_back True for a collective that starts the moment the previous one ended (on a CPU
    that is cheaper than one issued after compute).
    Returns (end of the last collective, seconds of communication, [(start, end)] per bucket).
    """
    spans = []
    now = 0.0
    for t_ready, nbytes in ready:
        start = t_ready if overlap else compute_end
        chained = bool(spans) and start <= spans[-1][1]
        s = max(now, start)
        now = s + comm_time(nbytes, chained)
        spans.append((s, now))
    busy = sum(e - s for s, e in spans)
    return max(now, compute_end), busy, spans


def buckets_ready(last_backward: tuple, sizes: list, fractions: list | None = None) -> list:
    """[(time, bytes)] of one chunk's buckets (bytes on the wire, in the order backward fills them) over the
    chunk's final backward (last layer first): each at its fraction of it (`bucket_ready`; None: evenly by
    bytes)."""
    start, end = last_backward
    if fractions is None:
        chunk_bytes, done, fractions = sum(sizes), 0.0, []
        for size in sizes:
            done += size
            fractions.append(done / chunk_bytes)
    return [(start + (end - start) * f, size) for f, size in zip(fractions, sizes)]


def gathered_blocks(cfg, system: str | None = None) -> int:
    """Blocks whose whole weights a ZeRO-3 rank holds at once: 1 when gathered just in time (the course's
    hooks), 2 when the next block's gather is prefetched during this one's compute (FSDP2, DeepSpeed)."""
    return 2 if zero_semantics(cfg, system).prefetch else 1
