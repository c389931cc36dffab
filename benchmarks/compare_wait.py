"""The exposed communication of the compare suite's data-parallel rows, split in two: the wait for a slower rank
and the communication itself (`compare`'s `straggle_wait_s`, measured from the ranks' spans on one clock,
predicted from the profile's straggle). compare_suite.py and compare_runs.py print it beside the goal; the goal
still reads the whole exposed communication.

    split(row)          {"wait": (predicted, measured), "rest": (predicted, measured)} of one compare row
    split_text(rows)    the page's paragraph and table for the held-out rows
    spread_text(rows)   how far the repeats of one layout measured its exposed communication apart
"""

from __future__ import annotations

import statistics

INSEPARABLE = ("ZeRO-3", "tp ")
"""Layouts (by name) whose collectives run inside forward and backward, so the runtime's compute spans include
their communication: their components are not compared (compare_suite.component_errors) nor split here."""
FLOOR = 0.10
"""A part is judged when it is at least this share of the measured step (as compare_suite's COMPONENT_FLOOR)."""


def split(row: dict) -> dict | None:
    """{"wait": (p, m), "rest": (p, m)} seconds per step of a row whose exposed communication both sides split,
    or None (a pipeline's sends, ZeRO-3 and tp, a row run before the split was measured, a failed row)."""
    if not row.get("ok") or any(k in row["name"] for k in INSEPARABLE):
        return None
    p, m = row["predicted"], row["measured"]
    pw, mw = p.get("straggle_wait_s"), m.get("straggle_wait_s")
    if pw is None or mw is None:
        return None
    pe, me = p["breakdown_s"].get("exposed_comm", 0.0), m["breakdown_s"].get("exposed_comm", 0.0)
    return {"wait": (pw, mw), "rest": (pe - pw, me - mw)}


def judged(row: dict) -> dict:
    """{part: relative error} of the parts of split(row) at least FLOOR of the measured step."""
    s = split(row)
    if s is None:
        return {}
    step = row["measured"]["step_time_s"]
    return {k: (p - m) / m for k, (p, m) in s.items() if m > 0 and m >= FLOOR * step}


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def split_text(rows: list, brief: bool = False) -> str:
    """Markdown: each row's exposed communication, its wait and the rest, predicted / measured, and how many
    judged parts are within 25%; '' when no row was split. `brief`: one line of lead, the split explained
    above it on the page."""
    shown = [(r, split(r)) for r in rows]
    shown = [(r, s) for r, s in shown if s]
    if not shown:
        return ""
    lines = ["| layout | exposed comm p / m | waiting for a slower rank p / m | the communication p / m |",
             "|---|---|---|---|"]
    for r, s in shown:
        pe, me = r["predicted"]["breakdown_s"]["exposed_comm"], r["measured"]["breakdown_s"]["exposed_comm"]
        lines.append(f"| {r['name']} | {_ms(pe)} / {_ms(me)} | {_ms(s['wait'][0])} / {_ms(s['wait'][1])} | "
                     f"{_ms(s['rest'][0])} / {_ms(s['rest'][1])} |")
    counts = {}
    for r, _ in shown:
        for k, e in judged(r).items():
            n, ok = counts.get(k, (0, 0))
            counts[k] = (n + 1, ok + (abs(e) <= 0.25))
    said = "; ".join(f"{'the wait' if k == 'wait' else 'the communication'}: {ok} of {n} within 25%"
                     for k, (n, ok) in sorted(counts.items())) or "no part is a tenth of its step"
    if brief:
        return f"""
These rows' exposed communication split as above ({said}):

{chr(10).join(lines)}
"""
    return f"""
Where did the exposed communication go? `compare` splits it on the rows whose ranks all issue the same
collectives: the time a rank spent in a collective before the last rank entered it (waiting for a slower
rank: the ranks' spans share one clock) and the rest (the communication itself). The simulator's wait is the
profile's straggle (`Hardware.straggle_factor`, measured by `bench` as processes started together drift
apart). The goal above reads the whole exposed communication; this says which half of it missed
({said}, each counted where it is at least {FLOOR:.0%} of the measured step).

{chr(10).join(lines)}
"""


def _pipeline(row: dict) -> bool:
    return "pp " in row["name"]


def spread(row: dict) -> tuple | None:
    """(min, median, max) seconds of exposed communication over a row's repeats (compare_suite.median_of keeps
    them; a pipeline's with its bubble, as its receive wait is communication in the runtime and bubble in the
    simulator), or None: fewer than two repeats, a row from before they were kept, ZeRO-3 / tp, or under FLOOR
    of the step."""
    xs = row.get("repeat_exposed_comm") or []
    if _pipeline(row):
        bubbles = row.get("repeat_bubble") or []
        xs = [x + b for x, b in zip(xs, bubbles)] if len(bubbles) == len(xs) else []
    if len(xs) < 2 or not row.get("ok") or any(k in row["name"] for k in INSEPARABLE):
        return None
    mid = statistics.median(xs)
    if mid < FLOOR * row["measured"]["step_time_s"]:
        return None
    return min(xs), mid, max(xs)


def spread_text(rows: list) -> str:
    """Markdown: the measurement's own scatter beside the 25% goal; '' when no row kept its repeats."""
    shown = [(r, spread(r)) for r in rows]
    shown = [(r, s) for r, s in shown if s]
    if not shown:
        return ""
    lines = ["| layout | measured over the repeats (pipelines: + bubble): min / median / max ms | widest repeat from the median | "
             "predicted ms |", "|---|---|---:|---:|"]
    wide = 0
    for r, (lo, mid, hi) in shown:
        far = max(mid - lo, hi - mid) / mid
        wide += far > 0.25
        p = r["predicted"]["breakdown_s"]
        predicted = p.get("exposed_comm", 0.0) + (p.get("bubble", 0.0) if _pipeline(r) else 0.0)
        lines.append(f"| {r['name']} | {_ms(lo)} / {_ms(mid)} / {_ms(hi)} | {far:.0%} | {_ms(predicted)} |")
    return f"""
How far apart the repeats of one layout measured its exposed communication (the same config, minutes apart, in
this sitting): in {wide} of {len(shown)} rows one repeat lies more than 25% from their median, so a prediction
held to 25% of one measurement is held to the machine's scatter as much as to the model.

{chr(10).join(lines)}
"""
