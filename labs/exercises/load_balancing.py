"""Exercises for lab 09, load balancing: stragglers, uneven shares that still give the right gradient,
balanced data, and where to send the next request.

In synchronous data parallel a step lasts as long as the slowest rank. With t_i seconds per sequence on
rank i and a global batch of G sequences, equal shares cost (G/N) max_i t_i; giving rank i a share in
proportion to its speed 1/t_i costs G / sum_j (1/t_j), the best any split can do.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only load_balancing      # or: pytest tests/exercises/test_load_balancing.py

Theory: docs/concepts/load_balancing.md; runtime: llama_course/coordination/load_balancing.py; cost model:
simulator/load_balancing.py.
"""

from __future__ import annotations


def proportional_split(total: int, speeds: list) -> list:
    """Exercise 9.1: split `total` sequences over ranks in proportion to `speeds`, in whole sequences.

    Largest remainder (Hamilton's method): every rank first gets floor(total x s_i / sum s), then the
    sequences left over go one each to the ranks with the largest fractional parts (ties: lower rank).
    The result sums to `total` and each share is within 1 of its exact quota. Raise ValueError for a
    negative total, an empty list or a non-positive speed.
    """
    raise NotImplementedError("Exercise 9.1: proportional_split")


def policy_step_time(policy: str, seconds_per_seq: list, global_batch: float, backup: int = 1) -> tuple:
    """Exercise 9.2: (compute seconds of one step, sequences in the update) under a load-balancing policy.

    Rank i takes seconds_per_seq[i] per sequence; shares may be fractional here (the continuous model).
        none            equal shares G/N; the step waits for the slowest rank
        dynamic_batch   shares proportional to speed, so every rank finishes at the same moment
        backup_workers  equal shares; the step uses the first N - backup gradients to arrive and drops the
                        rest, so it ends when the (N - backup)-th fastest rank finishes, and the update
                        holds (N - backup)/N of the G sequences
    Raise ValueError for an unknown policy, or backup not in [0, N).
    """
    raise NotImplementedError("Exercise 9.2: policy_step_time")


def assign_by_cost(lengths: list, n_ranks: int) -> list:
    """Exercise 9.3: balance documents of token `lengths` over ranks; return each rank's document indices.

    Equal document counts are not equal work when lengths vary (one rank gets the long ones). Use
    longest-processing-time-first: documents in order of decreasing length (ties: lower index first),
    each to the rank with the fewest tokens so far (ties: lower rank). Within each rank, list its documents
    longest first (so a micro-batch holds similar lengths: less padding). Every document appears exactly
    once; the most loaded rank is within 4/3 of the best possible. Raise ValueError for n_ranks < 1.
    """
    raise NotImplementedError("Exercise 9.3: assign_by_cost")


def least_loaded_dispatch(arrivals: list, works: list, speeds: list) -> list:
    """Exercise 9.4: send each request to the server that would finish it first; return each request's latency.

    Requests arrive at times `arrivals` (sorted) with `works[k]` units of work; server j does speeds[j]
    units per second and serves its queue first come, first served. A request sent to j starts at
    max(arrival, the moment j's queue drains) and ends work/speed later; choose the j with the earliest
    end (ties: lower index). Its latency is end - arrival. (Round robin would ignore both the queue and
    the speed: a server slower than its share of the load builds an unbounded queue.)
    """
    raise NotImplementedError("Exercise 9.4: least_loaded_dispatch")


def weighted_gradient_all_reduce(grad, n_local: int, global_batch: int, group=None):
    """Exercise 9.5: the global-batch mean gradient when ranks hold different numbers of sequences.

    Each rank computed `grad`, the gradient of the *mean* loss over its own n_local sequences (dynamic
    batch sizes make n_local differ between ranks). Averaging these with a plain all-reduce / N would
    weight a rank's sequences by 1/(N n_i), not 1/G: wrong whenever shares differ. Weight each rank's
    gradient by n_local / global_batch and all-reduce the sum over the group; return the result (a new
    tensor: the gradient of the mean loss over all G sequences, the same on every rank). A rank with
    n_local = 0 contributes zeros (its `grad` may be anything, even NaN).
    """
    raise NotImplementedError("Exercise 9.5: weighted_gradient_all_reduce")
