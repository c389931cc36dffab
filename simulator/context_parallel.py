"""Context parallelism: one sequence split over c GPUs, its keys and values all-gathered for attention.

Long sequences make activations, not weights, the memory that does not fit: at 128K tokens one LLaMA 405B
block keeps tens of GB per micro-batch even with tensor parallelism. Context parallelism cuts the sequence
into c parts. Every op but attention is per token, so each rank runs it on its s/c tokens; attention needs
every earlier key, so before it the ranks all-gather K and V (Llama 3's choice: with grouped-query attention
K and V are n_kv_heads/n_heads of Q's size, so the gather is small), and after its backward they
reduce-scatter dK and dV. Per block and micro-batch, on one rank of c (A_kv = b s (2 kv_dim / t) e bytes,
the gathered K and V of the whole sequence on one tensor-parallel rank):

    forward    all-gather(A_kv)                  backward   reduce-scatter(A_kv)
    compute    linear ops and norms on b s/c tokens; attention of s/c queries over up to s keys
    memory     activations of s/c tokens, plus the gathered K and V while the block's attention runs

A causal mask makes later queries cost more, so each rank holds two chunks of 2c (chunk r and chunk
2c - 1 - r, `spec.cp_chunks`): every rank then computes 1/c of the causal square (the head-tail load
balancing of Llama 3 and torch's context_parallel). The collectives wait for the projection before them
and the attention waits for them: they are exposed, like tensor parallelism's (Llama 3 reports the same).

The c ranks hold the same weights, so for gradients they are data-parallel ranks: the gradient reduction
and ZeRO's sharding run over dp x c replicas (`Config.replicas`; torchtitan's dp_shard_cp mesh). The rank
grid places them between tensor and data parallelism (spec.py), inside a node while t c fits in one.

    llama-course simulate configs/llama3-8b-h100.yaml --set seq_len=65536 parallel.cp=4
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.schema import ConfigError
from simulator.workload import DTYPE_BYTES


def check_context_parallel(cfg) -> None:
    """The rules parallel.cp adds to validation (ConfigError, one line)."""
    p = cfg.parallel
    if p.cp == 1:
        return
    if cfg.seq_len % (2 * p.cp):
        raise ConfigError(f"parallel.cp: 2 x cp = {2 * p.cp} does not divide seq_len {cfg.seq_len} (each rank holds "
                          f"two equal chunks of the sequence)")
    if p.sequence_parallel and (cfg.seq_len // p.cp) % p.tp:
        raise ConfigError(f"parallel.sequence_parallel: tp {p.tp} does not divide the {cfg.seq_len // p.cp} tokens "
                          f"of a context-parallel rank (seq_len {cfg.seq_len} / cp {p.cp})")


def kv_bytes(model, seq_len: int, micro_batch: int, tp: int, precision: str) -> float:
    """A_kv: the K and V of a whole sequence on one tensor-parallel rank (what the all-gather returns)."""
    kv_t = model.n_kv_heads * (model.dim // model.n_heads) // tp
    return 2.0 * micro_batch * seq_len * kv_t * DTYPE_BYTES[precision]


def cp_block_collectives(model, seq_len: int, micro_batch: int, tp: int, precision: str) -> list:
    """[(kind, bytes)] of one block's forward on one context-parallel rank; the backward's are the
    reduce-scatters of the same bytes."""
    return [("all_gather", kv_bytes(model, seq_len, micro_batch, tp, precision))]


@dataclass
class CPComm:
    """Seconds of context-parallel communication per micro-batch and block on one GPU."""

    block_forward: float
    block_backward: float


def cp_comm(cfg, comm, group) -> CPComm:
    """Time the K/V all-gather (forward) and dK/dV reduce-scatter (backward) of one block on `group`."""
    if len(group) <= 1:
        return CPComm(0.0, 0.0)
    p = cfg.parallel
    fwd = bwd = 0.0
    for kind, n in cp_block_collectives(cfg.model, cfg.seq_len, p.micro_batch_size, p.tp, cfg.training.precision):
        fwd += comm.time(kind, group, n)
        bwd += comm.time("reduce_scatter", group, n)
    return CPComm(fwd, bwd)
