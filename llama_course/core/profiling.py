"""Timers and Chrome traces of what each rank really did.

A `Tracer` records spans (name, stream, start, duration) on one rank; `write_trace` merges the ranks'
spans into Chrome trace-event JSON (docs/design.md, "Traces": `traceEvents`, `ph: "X"`, `pid` = rank,
`tid` = compute | comm | bubble), the format the simulator writes, so a measured step and a simulated
step open side by side in Perfetto (ui.perfetto.dev) or chrome://tracing.

    llama-course train configs/tiny.yaml --set parallel.pp=2 --trace runs/pp2.json
"""

from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import contextmanager

import torch.distributed as dist

from simulator import spec

STREAMS = spec.STREAMS
"""compute | comm | bubble: the trace `tid`s both engines use (simulator/spec.py)."""


class Tracer:
    """Span recorder for one rank. Disabled tracers cost one attribute check per span."""

    def __init__(self, enabled: bool = True, rank: int = 0, sync=None):
        self.enabled = enabled
        self.rank = rank
        self.sync = sync          # callable run before reading the clock (torch.cuda.synchronize on GPU)
        self.events: list = []
        self.steps: list = []     # [ts, dur] (microseconds, the events' clock) of each traced optimizer step
        # one clock for every process: perf_counter readings shifted onto wall time, so ranks line up
        self.origin = time.perf_counter() - time.time()

    @contextmanager
    def span(self, name: str, stream: str = "compute", **args):
        if not self.enabled:
            yield
            return
        if self.sync:
            self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                self.sync()
            self.add(name, stream, start, time.perf_counter() - start, **args)

    def add(self, name: str, stream: str, start: float, duration: float, **args) -> None:
        """Record a span; start is a perf_counter() reading, durations in seconds."""
        if self.enabled:
            event = {"name": name, "ph": "X", "pid": self.rank, "tid": stream,
                     "ts": (start - self.origin) * 1e6, "dur": duration * 1e6}
            if args:
                event["args"] = args
            self.events.append(event)

    def step(self, start: float, duration: float) -> None:
        """Record one training step's window (a perf_counter() reading and seconds), so that a reader can
        tell the steps apart (the trainer writes them in the trace's metadata `steps`)."""
        if self.enabled:
            self.steps.append([(start - self.origin) * 1e6, duration * 1e6])

    def clear(self) -> None:
        self.events = []
        self.steps = []

    def totals(self) -> dict:
        """Seconds per span name."""
        out: dict = {}
        for e in self.events:
            out[e["name"]] = out.get(e["name"], 0.0) + e["dur"] / 1e6
        return out


def write_trace(path: str, events: list, metadata: dict | None = None) -> None:
    """Write Chrome trace-event JSON atomically, with process names 'rank N'. The metadata's `steps` (step
    windows, {rank: [[ts, dur], ...]}) move with the events' clock."""
    t0 = min((e["ts"] for e in events), default=0.0)          # the trace starts at 0
    events = [dict(e, ts=e["ts"] - t0) for e in events]
    if metadata and metadata.get("steps"):
        metadata = dict(metadata, steps={r: [[ts - t0, dur] for ts, dur in w] for r, w in metadata["steps"].items()})
    ranks = sorted({e["pid"] for e in events})
    meta = [{"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"rank {r}"}} for r in ranks]
    doc = {"traceEvents": meta + sorted(events, key=lambda e: (e["pid"], e["ts"])), "displayTimeUnit": "ms"}
    if metadata:
        doc["metadata"] = metadata
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def write_measured_trace(path, ctx, tracer, comm_log: list) -> None:
    """Every training rank's spans in one Chrome trace; its metadata holds `comm_bytes`,
    `[rank][step] -> bytes by kind`, as the wire recorder counted them (compare reads it), and `steps`,
    `{rank: [[ts, dur] of each traced step]}` on the events' clock (compare reads each step apart)."""
    events, comm, steps = tracer.events, [comm_log], {tracer.rank: tracer.steps}
    # the ranks that train: everyone, or the workers of a parameter-server run (servers have returned)
    group = ctx.dp_group if ctx.world_size > ctx.dp * ctx.tp * ctx.pp else None
    size = dist.get_world_size(group) if ctx.world_size > 1 else 1
    if size > 1:
        gathered = [None] * size
        with warnings.catch_warnings():          # torch warns about its own gloo backend object here
            warnings.simplefilter("ignore", UserWarning)
            dist.all_gather_object(gathered, (events, comm_log, tracer.rank, tracer.steps), group=group)
        events = [e for rank_events, _, _, _ in gathered for e in rank_events]
        comm = [rank_comm for _, rank_comm, _, _ in gathered]
        steps = {rank: rank_steps for _, _, rank, rank_steps in gathered}
    if ctx.is_main:
        write_trace(path, events, {"source": "measured", "comm_bytes": comm, "steps": steps})
