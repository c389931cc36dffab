"""Exercises for lab 03, data_parallel: what each rank stores and sends, and a ZeRO-2 step written by hand.

N ranks each hold the whole model (or, with ZeRO, a 1/N shard of part of its state), train on G/N of the
global batch, and average gradients so every rank applies the update one process would apply to all G
sequences. The lab (labs/03_data_parallel.ipynb) predicts memory and step time with the simulator and
trains the tiny model with the course's engines (llama_course/parallel/data_parallel.py); here you derive the
numbers and write the systems yourself: a ZeRO-2 step, DDP's bucketed and overlapped all-reduce, FSDP's
gather-and-free with prefetch, and clipping by a global norm across shards.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only data_parallel      # or: pytest tests/exercises/test_data_parallel.py

Notation (Rajbhandari et al. 2020, "ZeRO"): Psi parameters, N data-parallel ranks, mixed precision with
Adam: 2 bytes of bf16 weights, 2 of bf16 gradients, K = 12 of fp32 optimizer state (master weights, two
moments) per parameter.
"""

from __future__ import annotations

import torch


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
    Raise ValueError for a stage outside 0-3 or dp < 1.
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


class BucketedDDP(torch.nn.Module):
    """Exercise 3.6: data parallelism whose gradients are all-reduced in buckets while the backward runs.

    What PyTorch's DistributedDataParallel does, written by you (its C++ reducer is off limits: the graded
    test fails an answer that runs it):

        ddp = BucketedDDP(model, bucket_size_mb=25)
        loss_fn(ddp(x), y).backward()          # buckets go on the wire as their gradients appear
        ddp.finish_gradient_synchronization()  # wait; every p.grad now holds the mean over the ranks
        optimizer.step()

    - Construction: replicas must start identical, whatever each rank initialised: send rank 0's
      parameters to the others. Then cut the parameters into buckets: walk them in reverse order of
      `module.parameters()` (the backward produces the last layer's gradients first), adding each to the
      current bucket unless that would take the bucket past bucket_size_mb x 2^20 bytes, in which case it
      starts a new one (a parameter bigger than the limit gets a bucket of its own).
    - Gradient hooks: `Tensor.register_post_accumulate_grad_hook(fn)` calls fn(param) once param.grad holds
      this backward's gradient. When a bucket's last gradient arrives, put the bucket on the wire: one
      all-reduce of its gradients flattened into one tensor, *asynchronous* (`async_op=True` returns a
      handle), so the backward goes on computing earlier layers while it travels.
    - finish_gradient_synchronization(): wait for every handle, turn the sums into means and copy them
      back into each parameter's .grad. Leave the wrapper ready for the next step.

    The graded test trains 3 steps on 2 gloo ranks against one process on the whole batch, and records the
    wire: one all-reduce per bucket, launched before the backward reaches the first layer.
    """

    def __init__(self, module, bucket_size_mb: float, group=None):
        super().__init__()
        raise NotImplementedError("Exercise 3.6: BucketedDDP")

    def forward(self, *args, **kwargs):
        raise NotImplementedError("Exercise 3.6: BucketedDDP.forward")

    def finish_gradient_synchronization(self) -> None:
        raise NotImplementedError("Exercise 3.6: BucketedDDP.finish_gradient_synchronization")


def fsdp_forward_backward(shards: list, shapes: list, x, target, apply_layer, group=None) -> tuple:
    """Exercise 3.7: one forward and backward of a model whose parameters are sharded (ZeRO-3 / FSDP).

    The model is a stack of layers; layer i's parameters live as one flat vector, zero-padded to a multiple
    of N (the group's size), and rank r holds only the r-th of its N equal pieces: `shards[i]`.
    `apply_layer(flat, shapes[i], h)` runs layer i on activations h given its full flat parameters (it
    ignores the padding). The loss is ((output - target) ** 2).mean() over this rank's batch x.

    Return (loss as a float, [one gradient shard per layer]): shard i is rank r's piece of the gradient of
    layer i's flat parameters, averaged over the ranks (what one process on every rank's batch computes).

    FSDP's rules, which the graded test watches:
    - A layer's full parameters exist only while it runs: all-gather them just before (into one flat
      tensor: `dist.all_gather_into_tensor`), drop them right after. No rank ever holds more than two
      layers' parameters: the one running and the next one.
    - Prefetch: issue the next layer's gather (async_op=True) *before* running the current one, so its
      communication overlaps this layer's compute. Wait for a gather only when its layer is about to run.
    - The forward builds no autograd graph (it would keep every layer's parameters alive): keep each layer's
      input instead, and in the backward gather the layer again, recompute it from that input with
      autograd, and take the gradients of its input and of its flat parameters (`torch.autograd.grad`).
    - Each layer's flat gradient is reduce-scattered (`dist.reduce_scatter_tensor`) so that rank r keeps
      only its piece; make it a mean over the ranks.
    """
    raise NotImplementedError("Exercise 3.7: fsdp_forward_backward")


def clip_grad_norm_sharded(grad_shards: list, max_norm: float, group=None) -> float:
    """Exercise 3.8: gradient clipping by the global norm when each rank holds only shards of the gradients.

    Under ZeRO-2/3 or FSDP every rank holds a different piece of every gradient (`grad_shards`, this rank's
    pieces). Clipping must use the norm of the *whole* gradient, as torch.nn.utils.clip_grad_norm_ would on
    one process: total = sqrt(sum of every element squared, over all tensors and all ranks). How little
    must travel for every rank to know it? Then scale every shard in place by
    min(1, max_norm / (total + 1e-6)), and return total (a float, the same on every rank).

    The graded test compares with clip_grad_norm_ on the whole gradients (once clipped, once not) and
    records what the ranks send.
    """
    raise NotImplementedError("Exercise 3.8: clip_grad_norm_sharded")
