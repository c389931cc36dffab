"""Exercises for lab 15, context parallelism: which tokens each rank holds, the causal mask on global
positions, what the K/V all-gather costs, and the gathered attention itself on real processes.

Context parallelism splits the *sequence* of every micro-batch over the c ranks of a cp group. Every op
but attention works token by token, so each rank runs it on its own s/c tokens. Attention needs the keys
and values of every earlier token: Llama 3 all-gathers K and V over the cp group (forward) and
reduce-scatters their gradients (backward). Under a causal mask a late query has more keys to read than an
early one, so each rank holds one early and one late chunk (head-tail load balancing).

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only context_parallel        # or: pytest tests/exercises/test_context_parallel.py

Theory: docs/concepts/context_parallel.md; the runtime is llama_course/parallel/context_parallel.py and
context_parallel_comm.py, the cost model simulator/context_parallel.py (with `simulator.spec.cp_chunks`).
They are off limits, and so are DTensor (torch's ring attention) and torch.distributed.nn's autograd
collectives: the graded tests fail an answer that runs them.
"""

from __future__ import annotations


def load_balanced_chunks(seq_len: int, cp: int, rank: int) -> list:
    """Exercise 15.1: the positions of the sequence that rank `rank` of a cp group of `cp` ranks holds.

    Cut the sequence of `seq_len` tokens into 2 cp equal chunks, numbered 0 .. 2 cp - 1; rank r holds chunk r
    (the head) and chunk 2 cp - 1 - r (the tail). Return them as a list of two (start, end) pairs, the head
    first, `end` exclusive: with seq_len 8 and cp 2, rank 0 holds [(0, 2), (6, 8)] and rank 1 [(2, 4), (4, 6)].
    Why not the c contiguous quarters? Count how many (query, key) pairs a causal mask lets each rank compute.
    Raise ValueError if 2 cp does not divide seq_len (or seq_len < 1), or rank is not in [0, cp).
    """
    raise NotImplementedError("Exercise 15.1: load_balanced_chunks")


def shard_sequence(x, cp: int, rank: int, dim: int = 1):
    """Exercise 15.1: rank `rank`'s part of a whole-sequence tensor `x` (sequence along `dim`).

    Its two chunks (load_balanced_chunks of x.shape[dim]) along `dim`, concatenated head first: a tensor
    with x.shape[dim] / cp entries along `dim`, the rest of the shape unchanged. Inputs and targets of a
    micro-batch are cut this way before the forward.
    """
    raise NotImplementedError("Exercise 15.1: shard_sequence")


def causal_mask(q_positions, seq_len: int):
    """Exercise 15.2: which keys each of a rank's queries may attend to.

    `q_positions` (a 1-D integer tensor) holds the GLOBAL positions of the rank's queries, in the rank's
    order (e.g. 0 1 6 7 for rank 0 above); the keys are the whole sequence's, positions 0 .. seq_len - 1.
    Return a bool tensor of shape (len(q_positions), seq_len), True where the query may see the key: a
    token sees itself and every token before it. (Masking on the rank's local indices 0 .. s/c - 1 would
    be the bug this exercise is about.)
    """
    raise NotImplementedError("Exercise 15.2: causal_mask")


def cp_gather_bytes(b: int, s: int, n_kv_heads: int, head_dim: int, tp: int, cp: int,
                    bytes_per_element: int = 2) -> tuple:
    """Exercise 15.3: the bytes of one block's K/V all-gather on one rank, for a micro-batch of b sequences of
    s tokens, n_kv_heads key/value heads of head_dim, tensor parallelism t (each tp rank holds
    n_kv_heads / t of the kv heads) and context parallelism cp.

    Return (gathered, received): `gathered` the bytes (an int) of the K and V of the whole sequence on one
    tensor-parallel rank (what the all-gather returns: the simulator's A_kv), `received` the part of it that came
    from the other cp ranks. How does `gathered` change with cp? (The backward's reduce-scatter moves the
    same bytes the other way.) Raise ValueError for a non-positive argument or if tp does not divide
    n_kv_heads.
    """
    raise NotImplementedError("Exercise 15.3: cp_gather_bytes")


def gathered_attention(q, k, v, positions, group=None):
    """Exercise 15.4: causal attention of this rank's queries over the whole sequence's keys and values,
    gathered over the cp group `group` (None: the default group), with autograd through the gather.

    Every rank of the group runs this at once (2 gloo processes in the graded test). q (b, n_heads, s/c, hd),
    k and v (b, n_kv_heads, s/c, hd) are this rank's, its tokens laid out as in exercise 15.1 (rank r of c
    holds load_balanced_chunks(s, c, r)); `positions` (s/c,) are their global positions. n_heads is a
    multiple of n_kv_heads (grouped-query attention: query head i reads kv head i // (n_heads / n_kv_heads),
    as `repeat_interleave` lays them out).

    Return (b, n_heads, s/c, hd): softmax(q K^T / sqrt(hd), masked: key position <= query position) V, where
    K and V are every rank's k and v. Put K and V on the wire in ONE all-gather (concatenate them along the
    heads), and gather nothing else: the gathered keys' positions follow from exercise 15.1, no need to send
    them. Write the gather as a `torch.autograd.Function` whose backward is ONE reduce-scatter: every rank's
    queries read rank r's keys, so the gradient of rank r's k and v is the sum of what every rank's attention
    sends back for them. Dense attention (the scores matrix) is fine; `F.scaled_dot_product_attention` with a
    bool mask too.
    """
    raise NotImplementedError("Exercise 15.4: gathered_attention")
