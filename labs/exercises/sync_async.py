"""Exercises for lab 08, synchronous and asynchronous updates: BSP, ASP, SSP and local SGD / DiLoCo.

N workers, worker i takes c_i seconds per gradient. BSP waits for all of them every step; ASP applies each
gradient when it arrives (so it was computed on weights that are already a few updates old: *stale*);
SSP (stale synchronous parallel) lets a worker run ahead of the slowest by at most s steps; local SGD
takes H local steps between averages, and DiLoCo puts an outer Nesterov optimizer on the average.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only sync_async      # or: pytest tests/exercises/test_sync_async.py

Theory: docs/concepts/sync_async.md; runtime: llama_course/coordination/sync_async.py (Clocks, LocalSGDSync) and
llama_course/coordination/parameter_server.py; cost model: simulator/sync_async.py (staleness_distribution).
"""

from __future__ import annotations


def bsp_step_time(compute_s: list, comm_s: float) -> tuple:
    """Exercise 8.1: (step seconds, share of worker time spent waiting) of one BSP step.

    Every worker computes its gradient (worker i: compute_s[i] seconds), waits at the barrier for the
    slowest, then all take part in the communication (comm_s). Return the step time and the fraction of
    the N workers' total compute-phase time (N x slowest) that was spent waiting rather than computing.
    One worker 3x slower among 4: the three fast ones idle 2/3 of the compute phase each. Workers that
    compute nothing wait for nothing (share 0). Raise ValueError for an empty list.
    """
    raise NotImplementedError("Exercise 8.1: bsp_step_time")


def asp_staleness(compute_s: list) -> list:
    """Exercise 8.2: the mean staleness of each worker's gradients under ASP (steady state, fast server).

    A gradient that worker i starts computing on version v is applied c_i seconds later, at version V; its
    staleness is V - v: the number of updates the *other* workers applied meanwhile. Worker j pushes 1/c_j
    updates per second, so during c_i the others push sum_{j != i} c_i / c_j. Return that for every i.
    Equal workers: N - 1 each. A straggler 3x slower sees 3x the staleness of the others: its gradients
    are the stalest, which is why SSP bounds it.
    """
    raise NotImplementedError("Exercise 8.2: asp_staleness")


def ssp_may_proceed(clocks: dict, worker, bound, finished=()) -> bool:
    """Exercise 8.3: may `worker` start its next step under stale synchronous parallel (Ho et al. 2013)?

    `clocks` maps each worker to the number of pushes it has completed. The worker may proceed while its
    clock is at most `bound` ahead of the slowest *other* worker that has not finished (workers in
    `finished` no longer hold anyone back). bound None is ASP (always proceed); bound 0 is BSP in lockstep.
    With no other unfinished worker, it may proceed.
    """
    raise NotImplementedError("Exercise 8.3: ssp_may_proceed")


def local_sgd_average(anchor, replicas: list, buffer, outer_lr: float = 1.0, momentum: float = 0.0) -> tuple:
    """Exercise 8.4: the outer step of local SGD / DiLoCo; return (new anchor, new buffer).

    `anchor` is x_prev, the weights every replica started the round from; `replicas` the N replicas'
    weights after their H local steps; `buffer` the outer momentum b (zeros at first). The outer gradient
    is delta = x_prev - mean_i x_i. Then Nesterov momentum:
        b <- mu b + delta;     x <- x_prev - eta (delta + mu b)
    eta = 1, mu = 0 is plain averaging (x = mean x_i); DiLoCo (Douillard et al. 2023) uses eta = 0.7,
    mu = 0.9. Arrays are numpy or torch (use only + - * /); do not modify the inputs.
    """
    raise NotImplementedError("Exercise 8.4: local_sgd_average")


def diloco_outer_step(params, anchor, buffer, outer_lr: float, momentum: float, group=None) -> None:
    """Exercise 8.5: exercise 8.4 for real, on every rank of a torch.distributed group at once.

    `params` is this replica's flat weight tensor after its local steps, `anchor` the flat x_prev (the
    same on every rank), `buffer` the flat outer momentum. Average `params` over the group with one
    all-reduce, apply the outer step, and update all three tensors *in place*: anchor becomes the new x,
    buffer the new b, and params is overwritten with the new x, so every replica starts the next round
    from identical weights. One all-reduce of Psi values every H steps: H times less traffic than
    data parallel's per-step all-reduce.
    """
    raise NotImplementedError("Exercise 8.5: diloco_outer_step")
