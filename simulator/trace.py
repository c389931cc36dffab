"""Trace: a simulated step as a Chrome trace (opens in Perfetto or chrome://tracing).

Format (docs/design.md, "Traces"): {"traceEvents": [...]} of complete events `ph: "X"` with `ts`/`dur` in microseconds,
`pid` = global rank, `tid` = "compute" | "comm" | "bubble". Event names are the runtime's: forward,
backward, backward_weight (zero bubble's W), send, recv, all_reduce (reduce_scatter, all_gather under ZeRO), optimizer, bubble, so a simulated
and a measured step can be laid side by side. One row per simulated rank: the p ranks of one pipeline
(rank = its pipeline stage's first TP, DP rank); the other dp x tp copies behave the same.

    llama-course simulate configs/llama-7b-a100.yaml --set parallel.pp=4 --trace step.json
"""

from __future__ import annotations

import json
import os

from simulator import spec
from simulator.pipeline_parallel import TASK_NAMES

US = 1e6


def _event(name, pid, tid, start, end, **args):
    return {"name": name, "ph": "X", "pid": pid, "tid": tid, "ts": start * US, "dur": max(0.0, end - start) * US,
            "args": args}


def trace_events(step, layout, cfg) -> list:
    """The traceEvents of one simulated step."""
    run = step.pipeline
    pids = layout.pp_group()
    dp_name = spec.gradient_sync_event(cfg.parallel.zero_stage)      # the runtime's name (simulator/spec.py)
    events = [{"name": "process_name", "ph": "M", "pid": pids[r], "args": {"name": f"rank {pids[r]} (stage {r})"}}
              for r in range(layout.pp)]
    by_rank: dict = {r: [] for r in range(layout.pp)}
    for t in run.tasks:
        name = TASK_NAMES[t.kind]
        events.append(_event(name, pids[t.rank], "compute", t.start, t.end, micro_batch=t.micro_batch,
                             chunk=t.chunk))
        by_rank[t.rank].append((t.start, t.end))
    for src, dst, kind, mb, start, end in run.sends:
        what = "activation" if kind == "F" else "gradient"
        events.append(_event("send", pids[src], "comm", start, end, micro_batch=mb, to=pids[dst], what=what))
        events.append(_event("recv", pids[dst], "comm", start, end, micro_batch=mb, frm=pids[src], what=what))
    for r, spans in by_rank.items():
        spans.sort()
        cursor = 0.0
        for start, end in spans:
            if start > cursor + 1e-12:
                events.append(_event("bubble", pids[r], "bubble", cursor, start))
            cursor = max(cursor, end)
    for r, spans in step.dp_spans.items():
        for start, end in spans:
            events.append(_event(dp_name, pids[r], "comm", start, end, group="dp"))
    for r, spans in step.optimizer_spans.items():
        (o_start, o_end), (g_start, g_end) = spans
        scalars = step.comm.get("step_scalars", 0.0)
        if scalars > 0:                 # the loss and gradient-norm all-reduces before the optimizer
            events.append(_event("step_scalars", pids[r], "comm", o_start - scalars, o_start))
        events.append(_event("optimizer", pids[r], "compute", o_start, o_end))
        if g_end > g_start:
            events.append(_event("all_gather", pids[r], "comm", g_start, g_end, group="dp"))
    return events


def write_trace(path: str, step, layout, cfg) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"traceEvents": trace_events(step, layout, cfg), "displayTimeUnit": "ms"}, f)
    return path


def read_trace(path: str) -> list:
    with open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data
