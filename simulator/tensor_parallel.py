"""Tensor parallel (+ sequence parallel): the collectives each block puts on the critical path.

Megatron-LM splits the attention heads and the MLP columns over t GPUs (column-parallel first matmul,
row-parallel second), so each block needs, per micro-batch of b sequences of s tokens (A = b s h e bytes):

    without sequence parallelism   forward: 2 all-reduce(A)         backward: 2 all-reduce(A)
    with sequence parallelism      forward: 2 all-gather(A) + 2 reduce-scatter(A), backward the same

A ring all-reduce is a reduce-scatter plus an all-gather, so sequence parallelism moves the same bytes; it
wins memory (norm and dropout activations are split s/t) and time (those element-wise kernels run on s/t
tokens). Full recomputation repeats the forward collectives before the backward. The vocabulary-parallel
embedding adds an all-reduce (A) forward; the vocabulary-parallel cross-entropy all-reduces b s
max/sum/target logits (fp32, 3 values per token). These collectives wait for the matmul before them and
the next matmul waits for them: they are exposed, not overlapped (Megatron-LM 2021).

Seed questions 1 and 9. Runs with `llama-course simulate configs/llama-7b-a100.yaml --set parallel.tp=8`.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.collectives import CommModel
from simulator.workload import DTYPE_BYTES


@dataclass
class TPComm:
    """Seconds of tensor-parallel communication per micro-batch on one GPU."""

    block_forward: float      # one block's forward collectives
    block_backward: float     # one block's backward collectives
    embedding_forward: float  # first stage
    head_forward: float       # last stage (loss)
    head_backward: float


def tp_block_collectives(seq_len: int, micro_batch: int, dim: int, precision: str,
                         sequence_parallel: bool) -> list:
    """[(kind, bytes)] of one block's forward on one TP rank (the backward has the same list)."""
    a = micro_batch * seq_len * dim * DTYPE_BYTES[precision]
    if sequence_parallel:
        return [("all_gather", a), ("reduce_scatter", a), ("all_gather", a), ("reduce_scatter", a)]
    return [("all_reduce", a), ("all_reduce", a)]


def tp_comm(cfg, comm: CommModel, group) -> TPComm:
    """Time the TP collectives of one micro-batch on the given TP group."""
    if len(group) <= 1:
        return TPComm(0.0, 0.0, 0.0, 0.0, 0.0)
    p = cfg.parallel
    prec = cfg.training.precision
    b, s, h = p.micro_batch_size, cfg.seq_len // p.cp, cfg.model.dim       # this GPU's tokens (context parallel)
    block = sum(comm.time(kind, group, n) for kind, n in
                tp_block_collectives(s, b, h, prec, p.sequence_parallel))
    a = b * s * h * DTYPE_BYTES[prec]
    emb = comm.time("reduce_scatter" if p.sequence_parallel else "all_reduce", group, a)
    loss = comm.time("all_reduce", group, 3 * 4 * b * s)
    head_bwd = comm.time("reduce_scatter" if p.sequence_parallel else "all_reduce", group, a)
    return TPComm(block, block, emb, loss, head_bwd)
