"""`llama-course compare CONFIG [--json] [--trace-dir DIR]`: predict a run, then run it, and report the error.

    llama-course compare configs/tiny.yaml
    llama-course compare configs/tiny.yaml --set parallel.pp=2 --set parallel.dp=1 --trace-dir runs/pp2

The simulator predicts one step of the config (on this machine's `cpu` profile when no GPU is here); the
runtime trains it with `--trace`, and the measured step is the median step time of the run's second half.
Components are compared where the runtime can time them: compute (forward + backward spans), exposed
communication (comm spans that no compute overlapped, per rank, averaged), bubble (idle spans of
pipeline schedules) and optimizer. relative_error = (predicted - measured) / measured.
Both Chrome traces are written side by side (predicted.json, measured.json): open them in Perfetto.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

COMPONENTS = ("compute", "exposed_comm", "bubble", "optimizer")
COMPUTE_NAMES = ("forward", "backward", "recompute")


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


def _spans(events: list, keep) -> list:
    return _merge([(e["ts"], e["ts"] + e["dur"]) for e in events if keep(e)])


def measured_components(trace_path: str, steps: int) -> dict:
    """Seconds per step of each component, averaged over ranks, from a measured Chrome trace."""
    with open(trace_path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    ranks = sorted({e["pid"] for e in events})
    if not ranks:
        return {}
    sums = {c: 0.0 for c in COMPONENTS}
    for rank in ranks:
        mine = [e for e in events if e["pid"] == rank]
        compute = _spans(mine, lambda e: e["tid"] == "compute" and e["name"] != "optimizer")
        comm = _spans(mine, lambda e: e["tid"] == "comm")
        sums["compute"] += _length(compute)
        sums["exposed_comm"] += _minus(comm, compute)
        sums["bubble"] += _length(_spans(mine, lambda e: e["tid"] == "bubble"))
        sums["optimizer"] += _length(_spans(mine, lambda e: e["name"] == "optimizer"))
    return {c: v / len(ranks) / steps / 1e6 for c, v in sums.items()}


def compare(config, overrides=(), trace_dir: str | None = None, steps: int | None = None, quiet: bool = True) -> dict:
    """Simulate and train the same config; {"predicted", "measured", "relative_error", "config"}."""
    import torch

    from llama_course.trainer import train
    from simulator.config import load_config
    from simulator.simulate import simulate

    overrides = list(overrides)
    if steps:
        overrides.append(f"training.steps={steps}")
    cfg = load_config(config, overrides)
    notes = []
    if cfg.cluster.gpu != "cpu" and not torch.cuda.is_available():
        overrides.append("cluster.gpu=cpu")
        notes.append(f"no GPU here: predicted on the measured cpu profile instead of {cfg.cluster.gpu}")
        cfg = load_config(config, overrides)
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="llama-course-compare-")
    os.makedirs(trace_dir, exist_ok=True)
    predicted_trace = os.path.join(trace_dir, "predicted.json")
    measured_trace = os.path.join(trace_dir, "measured.json")
    pred = simulate(cfg, trace_path=predicted_trace)

    # the components are read from the same steps as the step time: the second half of the run
    traced = max(1, cfg.training.steps - cfg.training.steps // 2)
    before = os.environ.get("LLAMA_COURSE_TRACE_STEPS")
    os.environ["LLAMA_COURSE_TRACE_STEPS"] = str(traced)
    try:
        records = train(config, overrides, metrics=os.path.join(trace_dir, "metrics.jsonl"), quiet=quiet,
                        trace=measured_trace)
    finally:
        if before is None:
            os.environ.pop("LLAMA_COURSE_TRACE_STEPS", None)
        else:
            os.environ["LLAMA_COURSE_TRACE_STEPS"] = before
    tail = records[len(records) // 2:] or records
    measured = {"step_time_s": statistics.median(r["step_time_s"] for r in tail),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in tail)}
    measured["breakdown_s"] = measured_components(measured_trace, min(traced, cfg.training.steps))
    predicted = {"step_time_s": pred["step_time_s"], "tokens_per_s": pred["tokens_per_s"],
                 "breakdown_s": {c: pred["breakdown_s"].get(c, 0.0) for c in COMPONENTS}}
    rel = {k: (predicted[k] - measured[k]) / measured[k] for k in ("step_time_s", "tokens_per_s")}
    rel["breakdown_s"] = {c: (predicted["breakdown_s"][c] - m) / m if m > 1e-4 else None
                          for c, m in measured["breakdown_s"].items()}
    return {"predicted": predicted, "measured": measured, "relative_error": rel,
            "traces": {"predicted": predicted_trace, "measured": measured_trace}, "notes": notes,
            "config": pred.get("config", {})}


def format_report(result: dict) -> str:
    p, m, r = result["predicted"], result["measured"], result["relative_error"]
    lines = [*(f"note: {n}" for n in result["notes"]),
             "| quantity | predicted | measured | error |", "|---|---:|---:|---:|",
             f"| step time (ms) | {p['step_time_s'] * 1e3:.2f} | {m['step_time_s'] * 1e3:.2f} | {r['step_time_s']:+.1%} |",
             f"| tokens/s | {p['tokens_per_s']:,.0f} | {m['tokens_per_s']:,.0f} | {r['tokens_per_s']:+.1%} |"]
    for c in COMPONENTS:
        if c in m["breakdown_s"]:
            err = r["breakdown_s"].get(c)
            lines.append(f"| {c} (ms) | {p['breakdown_s'][c] * 1e3:.2f} | {m['breakdown_s'][c] * 1e3:.2f} | "
                         f"{'-' if err is None else f'{err:+.1%}'} |")
    lines.append(f"traces: {result['traces']['predicted']}  {result['traces']['measured']}  (open in ui.perfetto.dev)")
    return "\n".join(lines)


def cli(args) -> int:
    result = compare(args.config, args.overrides, args.trace_dir, quiet=True)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
