"""Exercises for lab 03, data_parallel: what each rank stores and sends, and a ZeRO-2 step written by hand.

N ranks each hold the whole model (or, with ZeRO, a 1/N shard of part of its state), train on G/N of the
global batch, and average gradients so every rank applies the update one process would apply to all G
sequences. The lab (labs/03_data_parallel.ipynb) predicts memory and step time with the simulator and
trains the tiny model with the course's engines (llama_course/parallel/data_parallel.py); here you derive the
numbers and write the heart of ZeRO yourself.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only data_parallel      # or: pytest tests/exercises/test_data_parallel.py

Notation (Rajbhandari et al. 2020, "ZeRO"): Psi parameters, N data-parallel ranks, mixed precision with
Adam: 2 bytes of bf16 weights, 2 of bf16 gradients, K = 12 of fp32 optimizer state (master weights, two
moments) per parameter.
"""

from __future__ import annotations


def zero_memory_per_gpu(n_params: float, dp: int, zero_stage: int, bytes_weights: float = 2.0,
                        bytes_grads: float = 2.0, bytes_optimizer: float = 12.0) -> dict:
    """Exercise 3.1: bytes of weights, gradients and optimizer state on one GPU under ZeRO stage 0-3.

    Return {"params", "grads", "optimizer", "total"}. Stage 1 shards the optimizer state over the dp
    ranks, stage 2 also the gradients, stage 3 (= FSDP) also the weights. With the defaults, LLaMA-7B
    (Psi = 6.74e9) on 64 GPUs needs 108 GB per GPU at stage 0 and 1.7 GB at stage 3. Raise ValueError for a
    stage outside 0-3 or dp < 1.
    """
    raise NotImplementedError("Exercise 3.1: zero_memory_per_gpu")


def dp_bytes_per_step(n_params: float, dp: int, zero_stage: int, bytes_per_element: float = 2.0) -> float:
    """Exercise 3.2: bytes each rank sends per optimizer step (ring collectives, no gradient accumulation).

    Stage 0: one ring all-reduce of the gradients. Stages 1 and 2 (as the ZeRO paper does them): a
    reduce-scatter of the gradients (each rank needs only its shard's average to update its shard), then an
    all-gather of the updated weights: the same bytes as the all-reduce. Stage 3: the weights are gathered
    twice (forward and backward, they were freed in between) and the gradients reduce-scattered once, so
    1.5x. A ring reduce-scatter or all-gather of S bytes sends (N-1)/N S per rank. dp = 1 sends nothing.
    """
    raise NotImplementedError("Exercise 3.2: dp_bytes_per_step")


def bucketed_step_time(forward_s: float, backward_s: list, comm_s: list, overlap: bool = True) -> float:
    """Exercise 3.3: step time of data parallelism with gradient buckets, overlapped or not.

    The backward pass runs bucket by bucket: bucket i's gradients are complete when backward_s[0] + ... +
    backward_s[i] seconds of backward have run (after the forward). One communication stream all-reduces
    the buckets in that order, one at a time, each taking comm_s[i]: a bucket starts when it is complete and
    the previous all-reduce is done. Without overlap all of them start after the whole backward. The step
    ends when both the backward and the last all-reduce are done (the optimizer is left out). Raise
    ValueError when the two lists differ in length.
    """
    raise NotImplementedError("Exercise 3.3: bucketed_step_time")


def zero2_sgd_step(param, grad, momentum_shard, lr: float, momentum: float = 0.9, group=None):
    """Exercise 3.4: one ZeRO-2 step of SGD with momentum, on every rank of a torch.distributed group.

    Every rank holds the whole `param` (a 1-D tensor, identical on all ranks) and its own local `grad` (from
    its share of the batch). Rank r owns shard r of the flat parameter, `torch.tensor_split(param, N)[r]`,
    and keeps the momentum of that shard only (`momentum_shard`, updated in place). Do what ZeRO-2 does:

    1. reduce-scatter the gradients so rank r gets the *average* over ranks of its shard (average: a dp run
       must match one process on the whole batch);
    2. update its shard: m = momentum x m + g; shard -= lr x m (PyTorch's SGD with momentum, dampening 0);
    3. all-gather the updated shards so every rank holds the new full `param` (in place).

    Use torch.distributed's collectives (`dist.reduce_scatter` takes a list of the N input chunks,
    `dist.all_gather` a list of N outputs). The graded test runs 3 steps on 2 gloo ranks and holds `param`
    to a single process running torch.optim.SGD on the mean gradient, checks each rank's momentum is its
    shard's, and records what crossed the wire: a reduce-scatter of the gradient and an all-gather of one
    shard per step, nothing else. All-reducing the whole gradient and keeping a slice gets the same numbers
    with twice the traffic: that is ZeRO-1's gradient step, not ZeRO-2's, and loses the wire points. The
    test's sizes divide by N (real ZeRO pads its flat buffer to a multiple of N).
    """
    raise NotImplementedError("Exercise 3.4: zero2_sgd_step")


def adamw_step(param, grad, exp_avg, exp_avg_sq, step: int, lr: float, betas: tuple = (0.9, 0.95),
               eps: float = 1e-8, weight_decay: float = 0.1) -> None:
    """Exercise 3.5: one AdamW update (Loshchilov and Hutter 2019), in place on torch tensors.

    `step` counts from 1. Decoupled weight decay first: param -= lr x weight_decay x param. Then the moments
    m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g^2 (in place in exp_avg, exp_avg_sq), bias corrections
    c1 = 1 - b1^step and c2 = 1 - b2^step, and param -= lr x (m / c1) / (sqrt(v / c2) + eps). This is
    torch.optim.AdamW's rule; the graded test holds you to it over several steps. The two moments are the
    8 bytes of fp32 state per parameter that ZeRO-1 shards (exercise 3.1), plus a 4-byte fp32 master copy
    of the weights in mixed precision: LLaMA trained with AdamW, b2 = 0.95, weight decay 0.1.
    """
    raise NotImplementedError("Exercise 3.5: adamw_step")
