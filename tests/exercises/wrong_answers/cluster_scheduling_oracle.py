"""Exercises 13.3 and 13.4 handed in as calls to the SimPy cluster the graded tests compare against."""

from simulator.cluster_scheduling import Job, schedule
from solutions.cluster_scheduling import *  # noqa: F403

CONCEPT = "cluster_scheduling"
WRONG = [{"exercise": "13.3", "fails": ["test_gang_schedule_example", "test_gang_schedule_matches_the_cluster"],
              "message": "LeakError", "why": "calls simulator.cluster_scheduling.schedule, the tests' oracle"},
         {"exercise": "13.4", "fails": ["test_backfill_example", "test_backfill_matches_the_cluster"],
              "message": "LeakError", "why": "calls simulator.cluster_scheduling.schedule, the tests' oracle"}]


def _starts(jobs, gpus, backfill):
    for _, g, _ in jobs:
        if not 0 < g <= gpus:
            raise ValueError(f"a job needs {g} GPUs; the cluster has {gpus}")
    result = schedule([Job(i, a, g, d) for i, (a, g, d) in enumerate(jobs)], gpus, "fifo", backfill)
    return [j.start_s for j in sorted(result.jobs, key=lambda j: j.id)]


def gang_schedule(jobs, gpus):
    return _starts(jobs, gpus, False)


def backfill(jobs, gpus):
    return _starts(jobs, gpus, True)
