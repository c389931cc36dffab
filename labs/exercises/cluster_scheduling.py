"""Exercises for lab 13, cluster scheduling: shortest job first, gang scheduling, EASY backfilling and
fairness.

A shared cluster of G GPUs runs training jobs; job j arrives at a_j, needs g_j GPUs at once (a gang: a
data-parallel job cannot start on part of its ranks) and runs for d_j seconds. The completion time of a
job is JCT_j = finish_j - a_j.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only cluster_scheduling     # or: pytest tests/exercises/test_cluster_scheduling.py

Theory: docs/concepts/cluster_scheduling.md; the SimPy cluster is simulator/cluster_scheduling.py (it is
the oracle of exercises 13.3 and 13.4: read it after you have tried).
"""

from __future__ import annotations


def sjf_order(durations: dict) -> list:
    """Exercise 13.1: shortest job first on one machine with every job present at time 0.
    `durations` maps job id -> seconds; return the ids in the order SJF runs them (ties: smaller id first).
    """
    raise NotImplementedError("Exercise 13.1: sjf_order")


def mean_completion_time(durations: dict, order: list) -> float:
    """Exercise 13.2: the mean completion time when the jobs run back to back from time 0 in `order` on one
    machine (every job arrived at 0, so JCT = finish time); 0 when there are no jobs. Raise ValueError unless
    `order` names every job of `durations` exactly once. Then convince yourself (the test checks it) that sjf_order minimises it:
    what happens to the sum when two neighbours in the order swap?
    """
    raise NotImplementedError("Exercise 13.2: mean_completion_time")


def gang_schedule(jobs: list, gpus: int) -> list:
    """Exercise 13.3: strict FIFO with gang scheduling, event by event.

    `jobs` is a list of (arrival_s, gpus, duration_s). The queue is ordered by arrival (ties: list order).
    At every event time (an arrival or a finish), first release the GPUs of the jobs finishing then, then
    queue the jobs arriving then, then start jobs from the head of the queue while the head fits in the free
    GPUs. A job never starts before the jobs ahead of it (so a big job at the head blocks the queue even
    when smaller ones would fit). Return each job's start time, in the order of `jobs`. Raise ValueError if
    a job needs more GPUs than the cluster has (or none).
    """
    raise NotImplementedError("Exercise 13.3: gang_schedule")


def backfill(jobs: list, gpus: int) -> list:
    """Exercise 13.4: FIFO with EASY backfilling (durations are known exactly). Same events as 13.3; at each
    decision, walk the queue in order:
      - while no job has been blocked yet, start each job that fits;
      - the first job that does not fit is the head: it gets a reservation. Go through the running jobs by
        finish time, adding their GPUs to the free ones; the finish time at which the head first fits is
        the shadow time, and the GPUs then left over beyond the head's are the `extra` GPUs;
      - each later job that fits in the free GPUs now may start if it finishes by the shadow time, or if it
        needs no more than `extra` GPUs (then it uses them: extra -= its GPUs, unless it finishes by the
        shadow time).
    Return each job's start time, in the order of `jobs`. Why can the head never be delayed?
    """
    raise NotImplementedError("Exercise 13.4: backfill")


def jain_fairness(xs: list) -> float:
    """Exercise 13.5: Jain's fairness index of non-negative allocations xs (e.g. each job's speed
    d_j / JCT_j): (sum x)^2 / (n sum x^2). It is 1 when all are equal and 1/n when one gets everything.
    Raise ValueError for an empty list, a negative value or all zeros.
    """
    raise NotImplementedError("Exercise 13.5: jain_fairness")
