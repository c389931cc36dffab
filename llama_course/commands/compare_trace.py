"""What `compare` reads from a measured Chrome trace (the runtime's `--trace`): each component of the step per
rank, averaged over ranks, and how much of the exposed communication is a rank waiting for a slower one.

Spans are per process (`pid` = rank) on the streams `compute`, `comm`, `bubble` and `step`, with timestamps on
one clock for every process (llama_course/core/profiling.py), so the ranks' spans line up.
"""

from __future__ import annotations

import json
from collections import defaultdict

COMPONENTS = ("compute", "exposed_comm", "bubble", "optimizer")
OPTIMIZER_NAMES = ("optimizer", "grad_norm")
"""Measured spans that make up the simulator's `optimizer` component (which includes the gradient norm)."""


def _merge(intervals: list) -> list:
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _length(intervals: list) -> float:
    return sum(b - a for a, b in intervals)


def _minus(intervals: list, cover: list) -> float:
    """Length of `intervals` not covered by `cover` (both merged, microseconds)."""
    total, j = 0.0, 0
    for a, b in intervals:
        cur = a
        while j < len(cover) and cover[j][1] <= cur:
            j += 1
        k = j
        while k < len(cover) and cover[k][0] < b:
            if cover[k][0] > cur:
                total += cover[k][0] - cur
            cur = max(cur, cover[k][1])
            k += 1
        if cur < b:
            total += b - cur
    return total


def _is_compute(e: dict) -> bool:
    """Forward and backward (the optimizer step is its own component)."""
    return e["tid"] == "compute" and e["name"] != "optimizer"


def _spans(events: list, keep) -> list:
    return _merge([(e["ts"], e["ts"] + e["dur"]) for e in events if keep(e)])


def measured_components(trace_path: str, steps: int) -> dict:
    """Seconds per step of each component, averaged over ranks, from a measured Chrome trace."""
    events = _events(trace_path)
    ranks = sorted({e["pid"] for e in events})
    if not ranks:
        return {}
    sums = {c: 0.0 for c in COMPONENTS}
    for rank in ranks:
        mine = [e for e in events if e["pid"] == rank]
        compute = _spans(mine, _is_compute)
        comm = _spans(mine, lambda e: e["tid"] == "comm")
        sums["compute"] += _length(compute)
        sums["exposed_comm"] += _minus(comm, compute)
        # a pipeline's bubble spans are every gap between compute spans, and its sends and receives (comm)
        # lie in those gaps: idle is the part of a gap no communication covers, or it would count twice
        sums["bubble"] += _minus(_spans(mine, lambda e: e["tid"] == "bubble"), comm)
        sums["optimizer"] += _length(_spans(mine, lambda e: e["name"] in OPTIMIZER_NAMES))
    return {c: v / len(ranks) / steps / 1e6 for c, v in sums.items()}


def _events(trace_path: str) -> list:
    with open(trace_path) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def _keyed(comm: list) -> dict:
    """{(name, bucket, n): span} of one rank's comm spans: the n-th span of that name and bucket."""
    seen, out = defaultdict(int), {}
    for e in sorted(comm, key=lambda e: e["ts"]):
        key = (e["name"], (e.get("args") or {}).get("bucket"))
        out[key + (seen[key],)] = e
        seen[key] += 1
    return out


def measured_wait(trace_path: str, steps: int) -> float | None:
    """Seconds per step, averaged over ranks, of exposed communication spent waiting for a slower rank: in each
    collective, from the moment this rank entered it until the last rank did, where no compute covered it.

    Every rank must have issued the same collectives (the n-th span of each name and bucket is one collective
    on every rank: one data-parallel group); otherwise the ranks' spans do not pair up and this returns None
    (a pipeline's sends and receives, several groups). The rest of the exposed communication is the
    communication itself, once every rank had arrived. The simulator's counterpart is `straggle_wait_s`."""
    events = _events(trace_path)
    ranks = sorted({e["pid"] for e in events})
    keyed = {r: _keyed([e for e in events if e["pid"] == r and e["tid"] == "comm"]) for r in ranks}
    if len(ranks) < 2 or any(keyed[r].keys() != keyed[ranks[0]].keys() for r in ranks) or not keyed[ranks[0]]:
        return None
    total = 0.0
    for r in ranks:
        compute = _spans([e for e in events if e["pid"] == r], _is_compute)
        waits = []
        for key, e in keyed[r].items():
            last = max(keyed[q][key]["ts"] for q in ranks)
            end = min(last, e["ts"] + e["dur"])
            if end > e["ts"]:
                waits.append((e["ts"], end))
        total += _minus(_merge(waits), compute)
    return total / len(ranks) / steps / 1e6
