"""Least-loaded dispatch that looks only at when each queue drains, not at how fast each server works."""

from solutions.load_balancing import *  # noqa: F403

CONCEPT = "load_balancing"
WRONG = [{"exercise": "9.4", "fails": ["test_least_loaded_dispatch_hand_worked"], "message": "assert",
          "why": "picks the server whose queue drains first, ignoring its speed"}]


def least_loaded_dispatch(arrivals, works, speeds):
    free = [0.0] * len(speeds)
    out = []
    for t, w in zip(arrivals, works):
        j = min(range(len(speeds)), key=lambda j: (max(t, free[j]), j))
        free[j] = max(t, free[j]) + w / speeds[j]
        out.append(free[j] - t)
    return out
