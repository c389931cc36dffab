"""Data parallel: gradient buckets overlapped with backward, and ZeRO-1/2/3, on a rank's comm stream.

Every data-parallel replica computes gradients on its own micro-batches; before the optimizer step they
are averaged over the dp ranks of the same model shard. Per step and GPU, with Psi parameters on the GPU
and g bytes per gradient element:

    plain / ZeRO-0   all-reduce Psi g bytes            each rank sends 2 (dp-1)/dp Psi g
    ZeRO-1           reduce-scatter Psi g once per step, step on Psi/dp, all-gather Psi e of new weights
                     (the course's engine all-reduces instead, then steps its shard)
    ZeRO-2           as ZeRO-1; between steps it keeps only its gradient shard
    ZeRO-3 (FSDP)    per block and micro-batch: all-gather weights before forward and before backward;
                     gradients reduce-scattered once per step, after the last micro-batch (both engines
                     accumulate whole gradients until then, as FSDP2's set_requires_gradient_sync(False)
                     does). torch's FSDP2 prefetches the next block's weights during this block's compute,
                     so only what exceeds it is exposed; the course's engine gathers in a hook, just in
                     time, so every gather is exposed (`parallel.implementation` decides which)

Bucketing (`parallel.bucket_mb`): gradients are grouped into buckets of that size; a bucket is reduced as
soon as the backward pass has produced all of it, on the comm stream, while the backward continues (the
final backward of each pipeline chunk yields the gradients). With `overlap: false` (or bucket_mb 0, one
collective per tensor) everything starts after the backward. The exposed time is what outlasts the
backward. Gradient compression scales the bytes on the wire (`compression_factor`).

Seed questions 1, 7, 11, 22, 26. Runs with
`llama-course simulate configs/llama-7b-a100.yaml --set parallel.zero_stage=3 --trace zero3.json`.
"""

from __future__ import annotations

import simpy

from simulator import spec
from simulator.workload import DTYPE_BYTES


def compression_factor(cfg, matrices=None) -> float:
    """Bytes on the wire over uncompressed gradient bytes for `parallel.compression`."""
    p, prec = cfg.parallel, cfg.training.precision
    if p.compression in ("fp16", "bf16"):
        return 2.0 / DTYPE_BYTES[prec] if DTYPE_BYTES[prec] > 2 else 1.0
    if p.compression == "topk":
        # top-k picks different entries on every rank, so the sparse pieces cannot be summed on the way
        # (no ring all-reduce): they are all-gathered, (N-1) x k x (value + int32 index) bytes per rank,
        # against the dense ring's 2 (N-1)/N x n x e. The ratio grows with N: at N = 64 and 1% top-k in
        # fp32 it is 0.64 of the dense bytes, not 0.02 (beyond 1 / (N ratio) ranks, top-k loses).
        e = DTYPE_BYTES[prec]
        n_ranks = max(p.dp or 1, 2)
        return n_ranks * p.topk_ratio * (e + 4) / (2 * e)
    if p.compression == "powersgd":
        m = cfg.model
        mats = matrices or [(m.dim, m.dim), (m.dim, m.ffn_dim)]
        r = p.powersgd_rank
        return min(1.0, sum(r * (a + b) for a, b in mats) / sum(a * b for a, b in mats))
    return 1.0


def grad_bytes_per_param(cfg) -> float:
    """Gradients are reduced in the compute precision (2 bytes mixed, 4 fp32), before compression."""
    return float(DTYPE_BYTES[cfg.training.precision])


def bucket_sizes(tensor_numels: list, bucket_mb: float, element_bytes: int = 4) -> list:
    """Bytes of each gradient bucket of a chunk whose parameter tensors have `tensor_numels` elements (in
    registration order), in the order backward fills them: the runtime's own plan (simulator/spec.py's
    `bucket_plan`: MiB, a first bucket of at most 1 MiB, bucket_mb 0 one tensor per bucket), over its fp32
    gradient buffers (element_bytes 4)."""
    nbytes = [n * element_bytes for n in reversed(tensor_numels)]
    return [sum(nbytes[i] for i in bucket) for bucket in spec.bucket_plan(nbytes, bucket_mb)]


def gradient_sync(ready: list, overlap: bool, comm_time, compute_end: float) -> tuple:
    """Run a rank's gradient buckets through its comm stream (a SimPy process).

    ready: [(time the bucket's gradients exist, bytes)] in production order; comm_time(bytes, back_to_back)
    -> seconds, back_to_back True for a collective that starts the moment the previous one ended (on a CPU
    that is cheaper than one issued after compute).
    Returns (end of the last collective, seconds of communication, [(start, end)] per bucket).
    """
    env = simpy.Environment()
    spans = []

    def stream():
        for t_ready, nbytes in ready:
            start = t_ready if overlap else compute_end
            chained = bool(spans) and start <= spans[-1][1]
            if env.now < start:
                yield env.timeout(start - env.now)
            s = env.now
            yield env.timeout(comm_time(nbytes, chained))
            spans.append((s, env.now))

    env.process(stream())
    env.run()
    busy = sum(e - s for s, e in spans)
    return max(env.now, compute_end), busy, spans


def buckets_ready(last_backward: tuple, sizes: list) -> list:
    """Buckets of one chunk (bytes on the wire, in the order backward fills them) become ready evenly
    through the chunk's final backward (last layer first)."""
    start, end = last_backward
    chunk_bytes = sum(sizes)
    out, done = [], 0.0
    for size in sizes:
        done += size
        out.append((start + (end - start) * done / chunk_bytes, size))
    return out


def zero3_exposed(compute_s: float, gather_s: float) -> float:
    """ZeRO-3 prefetches the next block's weights during this block's compute: only the excess shows."""
    return max(0.0, gather_s - compute_s)
