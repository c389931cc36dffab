"""Reference solutions for the cluster-scheduling exercises (lab 13). Same functions as
labs/exercises/cluster_scheduling.py.

One machine, all jobs present: shortest job first minimises the mean completion time (an exchange argument:
swapping two adjacent jobs with d_a > d_b lowers the sum by d_a - d_b). A shared GPU cluster: jobs are
gangs (all their GPUs at once); FIFO blocks behind a big head, EASY backfilling lets later jobs run on idle
GPUs as long as the head's reservation (the shadow time) is not delayed.
"""

from __future__ import annotations


def sjf_order(durations: dict) -> list:
    """Exercise 13.1: job ids by increasing duration (ties by id)."""
    return sorted(durations, key=lambda j: (durations[j], j))


def mean_completion_time(durations: dict, order: list) -> float:
    """Exercise 13.2: mean completion time of jobs run back to back from time 0 in `order` on one machine."""
    if sorted(order) != sorted(durations):
        raise ValueError("order must name every job exactly once")
    t, total = 0.0, 0.0
    for j in order:
        t += durations[j]
        total += t
    return total / len(order) if order else 0.0


def _simulate(jobs: list, gpus: int, backfill: bool) -> list:
    for _, g, _ in jobs:
        if not 0 < g <= gpus:
            raise ValueError(f"a job needs {g} GPUs; the cluster has {gpus}")
    n = len(jobs)
    order = sorted(range(n), key=lambda i: (jobs[i][0], i))
    start = [None] * n
    running = {}                                  # job -> finish time
    free, queue, nxt, now = gpus, [], 0, 0.0
    while True:                                   # ends when nothing runs and nothing is due (see below)
        for i in [i for i, f in running.items() if f <= now]:       # finishes first ...
            free += jobs[i][1]
            del running[i]
        while nxt < n and jobs[order[nxt]][0] <= now:                # ... then arrivals ...
            queue.append(order[nxt])
            nxt += 1
        shadow = None                                                # ... then decide
        for i in list(queue):
            g, d = jobs[i][1], jobs[i][2]
            if shadow is None and g <= free:
                queue.remove(i)
            elif shadow is None:
                if not backfill:
                    break
                avail = free
                for end, eg in sorted((running[r], jobs[r][1]) for r in running):
                    avail += eg
                    if avail >= g:
                        shadow, extra = end, avail - g
                        break
                continue
            elif g <= free and (now + d <= shadow or g <= extra):
                queue.remove(i)
                if now + d > shadow:
                    extra -= g
            else:
                continue
            start[i], running[i] = now, now + d
            free -= g
        upcoming = [f for f in running.values()] + ([jobs[order[nxt]][0]] if nxt < n else [])
        if not upcoming:                          # the queue is empty too: any job fits an idle cluster
            break
        now = min(upcoming)
    return start


def gang_schedule(jobs: list, gpus: int) -> list:
    """Exercise 13.3: start time of each job (arrival_s, gpus, duration_s) under strict FIFO with gang
    scheduling on `gpus` GPUs, in the jobs' order."""
    return _simulate(jobs, gpus, backfill=False)


def backfill(jobs: list, gpus: int) -> list:
    """Exercise 13.4: start times under FIFO with EASY backfilling."""
    return _simulate(jobs, gpus, backfill=True)


def jain_fairness(xs: list) -> float:
    """Exercise 13.5: Jain's index (sum x)^2 / (n sum x^2)."""
    xs = list(xs)
    if not xs or any(x < 0 for x in xs) or not any(xs):
        raise ValueError("need at least one non-negative value, not all zero")
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
