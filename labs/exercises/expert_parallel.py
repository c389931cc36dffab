"""Exercises for lab 16, mixture of experts and expert parallelism: the router, the load-balancing loss, where
each token copy goes, what the dispatch costs, and the dispatch and combine themselves on real processes.

A mixture-of-experts block replaces its MLP by E expert MLPs and a router (a dim x E matmul): each token goes
to the k experts with the largest router logits (Mixtral: E 8, k 2) and its output is their outputs weighted
by the softmax of those k logits. Expert parallelism keeps E/ep experts on each of ep data-parallel ranks
(rank r: experts [r E/ep, (r+1) E/ep)) and moves the token copies to their experts by all-to-all (dispatch)
and back (combine); the backward runs both exchanges in reverse.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only expert_parallel        # or: pytest tests/exercises/test_expert_parallel.py

Theory: docs/concepts/expert_parallel.md; the runtime is llama_course/core/moe.py,
llama_course/parallel/expert_parallel.py and expert_parallel_comm.py, the cost model
simulator/expert_parallel.py. They are off limits, and so are torch.distributed.nn's autograd collectives:
the graded tests fail an answer that runs them.
"""

from __future__ import annotations


def route(logits, k: int) -> tuple:
    """Exercise 16.1: the router's choice for each token: (expert indices, routing weights).

    `logits` (T, E) are the router's scores of T tokens for E experts. Return `index` (T, k), each token's k
    largest logits' experts, largest first (`topk` does this), and `weights` (T, k), the softmax of those k
    logits alone, so that a token's weights sum to 1 (Mixtral renormalises among the chosen; a softmax over
    all E experts cut to the top k would not sum to 1 and would shrink every output). Keep `weights`
    differentiable: the router learns through them.
    """
    raise NotImplementedError("Exercise 16.1: route")


def load_balancing_loss(logits, index, n_experts: int):
    """Exercise 16.2: Switch Transformer's load-balancing loss, E sum_e f_e P_e, a 0-d tensor.

    `logits` (T, E) as in 16.1, `index` (T, k) the experts chosen. f_e is the share of the T k (token, expert)
    assignments that went to expert e (count assignments, not tokens: the f_e sum to 1), P_e the mean over the
    T tokens of the router's softmax over ALL E experts (differentiable: f is a count, so the gradient reaches
    the router through P). A uniform router with an even load gives 1; a router that sends everything to a
    few experts is pushed back by it. Why does an MoE need it at all? Think of what happens to an expert no
    token is sent to.
    """
    raise NotImplementedError("Exercise 16.2: load_balancing_loss")


def send_splits(index, n_experts: int, ep: int) -> list:
    """Exercise 16.3: how many rows (token copies) this rank sends to each ep rank in the dispatch.

    `index` (T, k) are this rank's routing choices; rank r of the ep group owns experts
    [r E/ep, (r+1) E/ep). Return a list of ep ints, entry r the number of (token, expert) assignments whose
    expert rank r owns: the all-to-all's input split sizes (they sum to T k). Raise ValueError if ep < 1 or ep
    does not divide n_experts.
    """
    raise NotImplementedError("Exercise 16.3: send_splits")


def dispatch_bytes(b: int, s: int, k: int, dim: int, tp: int = 1, cp: int = 1, bytes_per_element: int = 2) -> int:
    """Exercise 16.4: the bytes one GPU hands one block's dispatch all-to-all (per micro-batch).

    A micro-batch of b sequences of s tokens, split over cp context-parallel ranks; each token goes to k
    experts; hidden size dim, of which each of tp tensor-parallel ranks exchanges dim / tp. Return the bytes
    (an int) of the rows this GPU sends (1/ep of them to each ep rank, its own share included): the simulator's
    A. The combine sends as many back, and the backward repeats both. Does A depend on ep or on E? Raise
    ValueError for a non-positive argument, or if cp does not divide s or tp does not divide dim.
    """
    raise NotImplementedError("Exercise 16.4: dispatch_bytes")


def expert_parallel_moe(tokens, index, weights, experts, n_experts: int, group=None):
    """Exercise 16.5: the expert-parallel MoE layer on this rank: sum_j weights[t, j] expert_{index[t, j]}(x_t)
    for each of its T tokens, the experts spread over the ep ranks of `group` (None: the default group).

    Every rank of the group runs this at once (2 gloo processes in the graded test), each on its own tokens
    (T, d), routing index and weights (T, k) (from 16.1). `experts` are the E/ep experts this rank owns, in
    order (rank r: experts r E/ep .. (r+1) E/ep - 1), each a callable (n, d) -> (n, d).

    1. Sort this rank's T k assignments by expert (`argsort(index.flatten(), stable=True)`: row i of the sorted
       order is token i // k); the rows for rank 0's experts come first, then rank 1's, ...
    2. Counts: `bincount` per expert (E int64), exchanged with ONE `dist.all_to_all_single` (even splits,
       E/ep to each rank): you learn how many rows each rank will send to each of your experts.
    3. Dispatch: ONE `all_to_all_single` of the sorted token rows with uneven splits (16.3 in, the received
       counts out). Run each of your experts on its rows (every expert, even on zero rows).
    4. Combine: ONE `all_to_all_single` sending the outputs home, the splits swapped; multiply each by its
       routing weight and scatter-add (`index_add`) into the tokens.

    Nothing else on the wire. Autograd does not see through `all_to_all_single`: write the row exchange as a
    `torch.autograd.Function` whose backward is the same exchange with the splits swapped (a row's gradient
    goes back where the row came from), so the backward makes two all-to-alls and your experts' gradients sum
    what every rank's tokens sent them.
    """
    raise NotImplementedError("Exercise 16.5: expert_parallel_moe")
