"""What `compare` reads from a measured Chrome trace (the runtime's `--trace`): each component of the step per
rank, averaged over ranks, and how much of the exposed communication is a rank waiting for a slower one.

Spans are per process (`pid` = rank) on the streams `compute`, `comm`, `bubble` and `step`, with timestamps on
one clock for every process (llama_course/core/profiling.py), so the ranks' spans line up. Where the trace's
metadata holds each step's window (`steps`, the trainer writes it), every component is read step by step and
the median over the steps is reported, as the measured step time is the median step: a slow outlier step
moves neither (a mean of the components would not add up to the median step).
"""

from __future__ import annotations

import json
import statistics
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


def _clip(intervals: list, a: float, b: float) -> list:
    return [[max(x, a), min(y, b)] for x, y in intervals if y > a and x < b]


def _rank_components(mine: list, window: tuple | None) -> dict:
    """One rank's components (microseconds) inside `window` ((start, end); None: the whole trace)."""
    def spans(keep):
        got = _spans(mine, keep)
        return _clip(got, *window) if window else got

    compute, comm = spans(_is_compute), spans(lambda e: e["tid"] == "comm")
    # a pipeline's bubble spans are every gap between compute spans, and its sends and receives (comm)
    # lie in those gaps: idle is the part of a gap no communication covers, or it would count twice
    return {"compute": _length(compute), "exposed_comm": _minus(comm, compute),
            "bubble": _minus(spans(lambda e: e["tid"] == "bubble"), comm),
            "optimizer": _length(spans(lambda e: e["name"] in OPTIMIZER_NAMES))}


def _windows(meta_steps: dict, ranks: list) -> list | None:
    """[(rank -> (start, end)) for each traced step], from the trace's metadata `steps`; None without them."""
    steps = {int(r): w for r, w in meta_steps.items()}
    if not ranks or any(not steps.get(r) for r in ranks):
        return None
    n = min(len(steps[r]) for r in ranks)
    return [{r: (steps[r][i][0], steps[r][i][0] + steps[r][i][1]) for r in ranks} for i in range(n)]


def _per_step(windows: list | None, steps: int, ranks: list, of_rank) -> dict | None:
    """The median over the traced steps (`windows`) of `of_rank(rank, window)` ({name: microseconds}) averaged
    over the ranks, in seconds; without step windows, the whole trace's total over `steps`."""
    if windows is None:
        totals = [of_rank(r, None) for r in ranks]
        return {k: sum(t[k] for t in totals) / len(ranks) / steps / 1e6 for k in totals[0]}
    per_step = []
    for window in windows:
        parts = [of_rank(r, window[r]) for r in ranks]
        per_step.append({k: sum(p[k] for p in parts) / len(ranks) for k in parts[0]})
    return {k: statistics.median(p[k] for p in per_step) / 1e6 for k in per_step[0]}


def measured_components(trace_path: str, steps: int) -> dict:
    """Seconds per step of each component, averaged over ranks, from a measured Chrome trace (the median over
    its steps where it holds their windows)."""
    events, meta_steps = _load(trace_path)
    ranks = sorted({e["pid"] for e in events})
    if not ranks:
        return {}
    by_rank = {r: [e for e in events if e["pid"] == r] for r in ranks}
    return _per_step(_windows(meta_steps, ranks), steps, ranks,
                     lambda r, window: _rank_components(by_rank[r], window))


def _load(trace_path: str) -> tuple:
    """(complete events, the metadata's step windows {rank: [[ts, dur], ...]}) of a measured trace."""
    with open(trace_path) as f:
        doc = json.load(f)
    return [e for e in doc["traceEvents"] if e.get("ph") == "X"], (doc.get("metadata") or {}).get("steps") or {}


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
    events, meta_steps = _load(trace_path)
    ranks = sorted({e["pid"] for e in events})
    keyed = {r: _keyed([e for e in events if e["pid"] == r and e["tid"] == "comm"]) for r in ranks}
    if len(ranks) < 2 or any(keyed[r].keys() != keyed[ranks[0]].keys() for r in ranks) or not keyed[ranks[0]]:
        return None
    waits, compute = {}, {}
    for r in ranks:
        compute[r] = _spans([e for e in events if e["pid"] == r], _is_compute)
        mine = []
        for key, e in keyed[r].items():
            last = max(keyed[q][key]["ts"] for q in ranks)
            end = min(last, e["ts"] + e["dur"])
            if end > e["ts"]:
                mine.append((e["ts"], end))
        waits[r] = _merge(mine)

    def of_rank(r, window):
        if window is None:
            return {"wait": _minus(waits[r], compute[r])}
        return {"wait": _minus(_clip(waits[r], *window), _clip(compute[r], *window))}

    return _per_step(_windows(meta_steps, ranks), steps, ranks, of_rank)["wait"]


UNTRACED_SHARE = 0.1
"""Above this share of the measured step outside every span, `compare` says the components read low."""


def untraced_note(measured: dict) -> str | None:
    """A note when the measured components fall short of the measured step by more than UNTRACED_SHARE: time a
    rank spent outside every span (an untraced wait or sleep), so the components cannot be compared one by one."""
    parts, step = measured.get("breakdown_s") or {}, measured.get("step_time_s")
    if not parts or not step:
        return None
    traced = sum(parts.values())
    if step - traced <= UNTRACED_SHARE * step:
        return None
    return (f"the trace accounts for {traced / step:.0%} of the measured step: {(step - traced) * 1e3:.1f} ms per "
            "step and rank ran outside every span, so the measured components read low")
