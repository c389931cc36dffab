"""Exercises for lab 11, communication_compression: fewer bytes per gradient all-reduce, and what it costs.

A data-parallel step all-reduces every gradient element; a ring sends 2 (N-1)/N x n x e bytes per rank.
Compression sends fewer: 16-bit casts (2x), top-k sparsification with error feedback (Seide et al. 2014,
Stich et al. 2018), low-rank PowerSGD (Vogels et al. 2019). The lab (labs/11_communication_compression.ipynb)
predicts the time saved with the simulator and trains the tiny model with each method
(llama_course/parallel/communication_compression.py); here you derive the bytes and write the compressors.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only communication_compression
"""

from __future__ import annotations


def wire_bytes(method: str, numel: int, n_ranks: int, ratio: float = 0.01, shape: tuple | None = None,
               rank: int = 4) -> float:
    """Exercise 11.1: bytes one rank sends to average one gradient of `numel` fp32 elements over n_ranks.

    - none: fp32 ring all-reduce, 2 (N-1)/N x 4 numel;
    - fp16 / bf16: the same ring on 2-byte elements;
    - topk: k = max(1, int(ratio x numel)) entries, each a 4-byte value and a 4-byte int32 index. Every rank
      keeps different entries, so they cannot be summed on the way: the ring all-gathers them, and each
      rank sends its own and forwards the others': (N-1) x 8k;
    - powersgd: the gradient is the matrix `shape` = (a, b); P = M Q (a x r) and Q = M^T P (b x r) are each
      ring all-reduced in fp32, with r = min(rank, a, b).

    One rank sends nothing. Raise ValueError for an unknown method or powersgd without a 2-D shape.
    """
    raise NotImplementedError("Exercise 11.1: wire_bytes")


def topk_error_feedback(grad, residual, k: int) -> tuple:
    """Exercise 11.2: top-k sparsification with error feedback, on one rank (torch tensors, 1-D).

    Add the residual (what earlier steps did not send) to the gradient: e = grad + residual. Keep the k
    entries of largest |e|; return `(indices, values, new_residual)` where values = e[indices] and
    new_residual is e with those k entries zeroed. Do not modify the inputs. Nothing is ever lost, only
    delayed: values scattered back plus new_residual equal grad + residual exactly.
    """
    raise NotImplementedError("Exercise 11.2: topk_error_feedback")


def powersgd_step(matrix, q) -> tuple:
    """Exercise 11.3: one PowerSGD power iteration on one rank: the rank-r approximation of `matrix`.

    matrix M is a x b, q is b x r (the previous step's Q: warm start). P = M Q; orthonormalise P's columns
    (torch.linalg.qr(P).Q); Q' = M^T P. Return `(p, q_new, approximation)` with approximation = P Q'^T.
    On N ranks the two products are all-reduced (averaged) before they are used: the sum of the ranks'
    M_i Q is (sum M_i) Q, which is why a low-rank factorisation can be all-reduced at all. With r at least
    M's rank the approximation is exact; repeated steps converge to the best rank-r approximation.
    """
    raise NotImplementedError("Exercise 11.3: powersgd_step")


def topk_all_reduce(grad, residual, k: int, group=None):
    """Exercise 11.4: average a gradient over a torch.distributed group by exchanging top-k entries only.

    On every rank: compress with exercise 11.2 (update `residual` in place with the new residual), then
    all-gather every rank's k indices and k values (`dist.all_gather` into lists of equal-size tensors),
    scatter-add them into a zero dense tensor (indices can repeat across ranks: use `index_add_`) and
    divide by the number of ranks. Return that dense tensor: every rank must get the same. The graded test
    runs 2 gloo ranks for 3 steps and compares with the average of each rank's own top-k, computed in one
    process, and records what each rank hands to torch.distributed: only its k values and k indices may
    travel (a dense all-reduce of the sparsified gradient gives the same numbers and saves no bytes).
    """
    raise NotImplementedError("Exercise 11.4: topk_all_reduce")
