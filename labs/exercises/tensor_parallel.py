"""Exercises for lab 04, tensor parallelism: what a Megatron block sends, how its matmuls split, what it
stores, and the vocabulary-parallel cross-entropy on real processes.

A block on t ranks: the first matmul of each pair is column-parallel (rank r keeps output features
[r out/t, (r+1) out/t)), the second row-parallel (rank r keeps the matching input features and produces a
partial sum); one all-reduce adds the partial sums. f (forward identity, backward all-reduce) and g (forward
all-reduce, backward identity) wrap each pair: llama_course/parallel/tensor_parallel_comm.py.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only tensor_parallel        # or: pytest tests/exercises/test_tensor_parallel.py

Theory: docs/concepts/tensor_parallel.md; the runtime is llama_course/parallel/tensor_parallel.py (its
f and g are off limits for exercises 4.6 and 4.7, and so are DTensor and torch.distributed.nn's autograd
collectives: the graded tests fail an answer that runs them).
"""

from __future__ import annotations


def tp_block_comm_bytes(b: int, s: int, h: int, t: int, bytes_per_element: int = 2,
                        sequence_parallel: bool = False) -> float:
    """Exercise 4.1: bytes one tensor-parallel rank sends in one transformer block, forward and backward
    together, for a micro-batch of b sequences of s tokens, hidden size h, on t ranks (ring collectives).

    Count the collectives: attention and MLP each end in a row-parallel layer (g) and start after f. With
    sequence parallelism each all-reduce becomes an all-gather and a reduce-scatter along the sequence.
    Use exercise 2.1's ring costs. Raise ValueError for a non-positive argument.
    """
    raise NotImplementedError("Exercise 4.1: tp_block_comm_bytes")


def column_parallel_linear(x, weight, rank: int, t: int):
    """Exercise 4.2: column-parallel linear layer. `weight` is the FULL (out, in) weight of an nn.Linear
    without bias (y = x @ weight.T); rank `rank` of t holds the output features [rank out/t, (rank+1) out/t).
    Return this rank's part of y: a tensor of shape (..., out/t). Raise ValueError if t does not divide out.
    """
    raise NotImplementedError("Exercise 4.2: column_parallel_linear")


def row_parallel_linear(x_shard, weight, rank: int, t: int):
    """Exercise 4.3: row-parallel linear layer. `weight` is the FULL (out, in) weight; rank `rank` holds the
    input features [rank in/t, (rank+1) in/t) and receives only those features of x: `x_shard` (..., in/t)
    (exactly what a column-parallel layer before it produced). Return this rank's partial sum, shape
    (..., out): the all-reduce (sum over ranks) of these gives x @ weight.T. Raise ValueError if t does not
    divide in.
    """
    raise NotImplementedError("Exercise 4.3: row_parallel_linear")


def tp_activation_bytes(s: int, b: int, h: int, a: int, t: int = 1, sequence_parallel: bool = False) -> float:
    """Exercise 4.4: activation bytes one transformer layer keeps for its backward (16-bit activations,
    1-byte dropout masks, no recomputation), on one of t tensor-parallel ranks, for s tokens, micro-batch b,
    hidden h, a attention heads. Korthikanti et al. 2022 ("Reducing activation recomputation in large
    transformer models"), section 4: without parallelism a layer stores s b h (34 + 5 a s / h) bytes.

    Which of those terms does tensor parallelism split by t (inside the parallel regions), and which stay
    whole (the layer norms, dropouts and the inputs of the regions: 10 s b h)? What does sequence parallelism
    do to those? Raise nothing; t = 1 is no parallelism.
    """
    raise NotImplementedError("Exercise 4.4: tp_activation_bytes")


def vocab_parallel_cross_entropy(logits, targets, vocab_start: int, group=None) -> tuple:
    """Exercise 4.5: cross-entropy from the vocabulary-parallel head, without ever gathering the logits.

    logits: (N, V/t) float tensor, this rank's columns of the vocabulary, token ids
    [vocab_start, vocab_start + V/t); targets: (N,) global token ids (each owned by exactly one rank).
    The process group `group` (None: the default group) holds the t ranks.

    Return (loss, dlogits): loss (N,) the per-token cross-entropy log(sum_j exp z_j) - z_target, the same
    on every rank; dlogits (N, V/t) the gradient of loss.mean() with respect to THIS rank's logits.
    Use only all-reduces of N numbers (three suffice: the max for numerical stability, the sum of
    exponentials, the target's logit); all_gather of the logits is forbidden (the test disables it).
    Hint: d loss_i / d z_ij = softmax_ij - [j == target_i].
    """
    raise NotImplementedError("Exercise 4.5: vocab_parallel_cross_entropy")


def copy_to_tp_region(x, group=None):
    """Exercise 4.6: Megatron's f, the operator that opens a tensor-parallel region.

    Every rank of the group holds the same x and feeds it to its own shard of a column-parallel layer.
    Forward: nothing to send, x goes in unchanged. Backward: each rank's shard produced only its part of
    d(loss)/dx; the replicated x needs the sum of those parts, on every rank. Write it as a
    `torch.autograd.Function` (static `forward(ctx, x, group)` and `backward(ctx, grad)`, which returns one
    gradient per input of forward: None for the group) and return `YourFunction.apply(x, group)`. Do not
    modify the gradient autograd hands you in place.
    """
    raise NotImplementedError("Exercise 4.6: copy_to_tp_region")


def reduce_from_tp_region(x, group=None):
    """Exercise 4.6: Megatron's g, the operator that closes a tensor-parallel region: the conjugate of f.

    Each rank holds a partial sum (the output of its row-parallel shard). Forward: every rank needs the
    whole sum. Backward: what the rest of the model computes from the sum is replicated, so every rank
    already holds the whole gradient. Which direction communicates? Same form as copy_to_tp_region; do not
    modify x in place (it is saved for other uses by autograd).
    """
    raise NotImplementedError("Exercise 4.6: reduce_from_tp_region")


def tp_mlp(x, w1_shard, w2_shard, group=None):
    """Exercise 4.7: the Megatron MLP y = gelu(x W1^T) W2^T on t ranks, with its communication.

    W1 (ffn x h) is split by rows (column-parallel: rank r holds `w1_shard`, ffn/t of its output features),
    W2 (h x ffn) by columns (row-parallel: `w2_shard`, the matching ffn/t input features). x (..., h) is
    the same on every rank. Put f and g (exercise 4.6) where they belong so that y, the gradient of x and
    the gradients of both shards are what one process computes on the unsplit weights, with exactly one
    all-reduce in the forward and one in the backward. The graded test runs 2 gloo ranks against the
    unsplit MLP and records the all-reduces of each pass.
    """
    raise NotImplementedError("Exercise 4.7: tp_mlp")
