"""Plots for the labs and docs: pipeline Gantt charts from Chrome traces (simulated or measured), the
bubble against the number of micro-batches, memory and step-time stacks of layouts, and job schedules.

Gantt charts: one row per rank, forward tasks light, backward tasks dark, each labelled with its
micro-batch; bubbles are the white gaps. matplotlib is imported only when a plot is drawn (Agg backend,
so it works headless).

    llama-course simulate configs/llama-7b-a100.yaml --set parallel.pp=4 --trace pp.json
    python -c "from simulator.plots import pipeline_gantt; pipeline_gantt('pp.json', 'pp.png')"
"""

from __future__ import annotations

from simulator.pipeline_parallel import TASK_NAMES, simulate_pipeline
from simulator.trace import read_trace

COLORS = {"forward": "#7fb3e6", "backward": "#1f5f99", "backward_weight": "#5b8c5a", "optimizer": "#999999"}


def _pyplot():
    import matplotlib

    backend = matplotlib.get_backend().lower()
    if backend != "agg" and "inline" not in backend:      # a notebook's inline backend ('inline' in recent
        matplotlib.use("Agg")                            # matplotlib) must stay, or its figures never show
    import matplotlib.pyplot as plt

    return plt


def _events(trace) -> list:
    if isinstance(trace, str):
        return read_trace(trace)
    if isinstance(trace, dict):
        return trace["traceEvents"]
    return list(trace)


def pipeline_gantt(trace, out_path: str | None = None, title: str | None = None, labels: bool = True, ax=None):
    """Draw the compute stream of every rank in `trace` (a path, a dict or a list of events).

    Returns the matplotlib Figure; saves it when `out_path` is given. Pass `ax` to draw into an existing axes.
    """
    plt = _pyplot()
    events = _events(trace)
    tasks = [e for e in events if e.get("ph") == "X" and e.get("tid") == "compute"]
    ranks = sorted({e["pid"] for e in tasks})
    row = {pid: i for i, pid in enumerate(ranks)}
    if ax is None:
        fig, ax = plt.subplots(figsize=(12, 0.5 * len(ranks) + 1.5))
    else:
        fig = ax.figure
    unit, scale = ("ms", 1e-3)
    for e in tasks:
        start, dur = e["ts"] * scale, e["dur"] * scale
        ax.barh(row[e["pid"]], dur, left=start, height=0.8, color=COLORS.get(e["name"], "#cccccc"),
                edgecolor="white", linewidth=0.5)
        mb = (e.get("args") or {}).get("micro_batch")
        if labels and mb is not None and len(tasks) <= 600:
            ax.text(start + dur / 2, row[e["pid"]], str(mb), ha="center", va="center", fontsize=6,
                    color="white" if e["name"] in ("backward", "backward_weight") else "black")
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([f"rank {pid}" for pid in ranks])
    ax.invert_yaxis()
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title or "pipeline schedule (light: forward, dark: backward, green: weight gradient, gaps: bubble)")
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def last_step(trace) -> list:
    """The events of the last training step of a trace, time shifted so that the step starts at 0.

    A measured trace holds several steps (each rank's ends with its `optimizer` span) and each process
    stamps its events from its own clock origin, so every rank is cut after its second-to-last optimizer
    span and aligned on its own step start (the pipeline engine starts a traced step with a barrier and
    marks the wait before its first task as `bubble`). A simulated trace holds one step on one clock and
    comes back whole, shifted to its first task."""
    events = [e for e in _events(trace) if e.get("ph") == "X"]
    ranks = sorted({e["pid"] for e in events})
    ends = {r: sorted(e["ts"] + e["dur"] for e in events if e["pid"] == r and e["name"] == "optimizer")
            for r in ranks}
    if not any(len(v) >= 2 for v in ends.values()):
        t0 = min((e["ts"] for e in events if e.get("tid") == "compute"), default=0.0)
        return [dict(e, ts=e["ts"] - t0) for e in events if e["ts"] >= t0]
    out = []
    for r in ranks:
        begin = ends[r][-2] if len(ends[r]) >= 2 else float("-inf")
        mine = [e for e in events if e["pid"] == r and e["ts"] >= begin]
        t0 = min((e["ts"] for e in mine if e.get("tid") in ("compute", "bubble")), default=0.0)
        out += [dict(e, ts=e["ts"] - t0) for e in mine if e["ts"] >= t0]
    return out


def schedule_gantt(schedule: str, p: int, m: int, v: int = 1, forward: float = 1.0, backward: float = 2.0,
                   ax=None):
    """Simulate one step of `schedule` with equal stages and free communication and draw it: forward and
    backward take `forward` and `backward` time units per stage (split over the v chunks of a rank)."""
    n = p * v
    run = simulate_pipeline(schedule, p, m, v, [forward / v] * n, [backward / v] * n)
    events = [{"name": TASK_NAMES[t.kind], "ph": "X", "pid": t.rank, "tid": "compute",
               "ts": t.start * 1e3, "dur": (t.end - t.start) * 1e3, "args": {"micro_batch": t.micro_batch}}
              for t in run.tasks]
    idle = 1 - m * (forward + backward) / run.makespan
    fig = pipeline_gantt(events, ax=ax, title=f"{schedule}{f' v={v}' if v > 1 else ''}, p={p}, m={m}: "
                                              f"{run.makespan:g} time units, bubble {idle:.0%}")
    (ax or fig.axes[0]).set_xlabel("time (units: one forward of one stage = 1)")
    return fig


def gantt_pair(predicted, measured, out_path: str | None = None, title: str = ""):
    """The simulated step above the measured one (its last step), each on its own time axis."""
    plt = _pyplot()
    pred, meas = last_step(predicted), last_step(measured)
    n = len({e["pid"] for e in pred if e.get("tid") == "compute"}) + len({e["pid"] for e in meas
                                                                          if e.get("tid") == "compute"})
    fig, axes = plt.subplots(2, 1, figsize=(12, 0.5 * n + 3))
    pipeline_gantt(pred, ax=axes[0], title=f"{title} simulated (light: forward, dark: backward, gaps: bubble)")
    pipeline_gantt(meas, ax=axes[1], title=f"{title} measured on gloo processes (last step)")
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def bubble_curve(p: int, micro_batches, forward: float = 1.0, backward: float = 2.0, vpp: int = 2,
                 out_path: str | None = None):
    """Simulated idle share of a step against m for GPipe, 1F1B and interleaved 1F1B (vpp chunks), equal
    stages and free communication, with the closed forms (p-1)/(m+p-1) and (p-1)/(v m+p-1) as lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ms = list(micro_batches)
    for schedule, v, marker in (("gpipe", 1, "o"), ("1f1b", 1, "x"), ("interleaved_1f1b", vpp, "s")):
        xs, ys = [], []
        for m in ms:
            if schedule == "interleaved_1f1b" and m % p:
                continue
            run = simulate_pipeline(schedule, p, m, v, [forward / v] * (p * v), [backward / v] * (p * v), record=False)
            ideal = m * (forward + backward)
            xs.append(m)
            ys.append(1 - ideal / run.makespan)
        ax.plot(xs, ys, marker, label=f"{schedule}{f' (v={v})' if v > 1 else ''} simulated", ms=6,
                fillstyle="none" if marker != "x" else "full")
    ax.plot(ms, [(p - 1) / (m + p - 1) for m in ms], "-", color="gray", label="(p-1)/(m+p-1)")
    ax.plot(ms, [(p - 1) / (vpp * m + p - 1) for m in ms], "--", color="gray", label=f"(p-1)/({vpp}m+p-1)")
    ax.set_xlabel("micro-batches per step m")
    ax.set_ylabel("bubble: idle share of the step")
    ax.set_title(f"pipeline bubble, p = {p} stages")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def _stacks(labels, rows: list, keys, ylabel: str, title: str, scale: float, out_path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    bottom = [0.0] * len(labels)
    for key in keys:
        vals = [r.get(key, 0.0) * scale for r in rows]
        ax.bar(range(len(labels)), vals, bottom=bottom, label=key.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20 if max(len(x) for x in labels) > 8 else 0, ha="right"
                       if max(len(x) for x in labels) > 8 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def memory_stacks(results: dict, out_path: str | None = None, title: str = "memory per GPU"):
    """Stacked bars of memory_per_gpu_bytes (params, grads, optimizer, activations) of simulate() results,
    {label: result}, in GB."""
    rows = [r["memory_per_gpu_bytes"] for r in results.values()]
    return _stacks(list(results), rows, ("params", "grads", "optimizer", "activations"), "GB per GPU", title,
                   1e-9, out_path)


def step_stacks(results: dict, out_path: str | None = None, title: str = "where the step goes"):
    """Stacked bars of breakdown_s of simulate() results, {label: result}, in seconds."""
    rows = [r["breakdown_s"] for r in results.values()]
    keys = [k for k in ("compute", "recompute", "exposed_comm", "bubble", "optimizer")
            if any(row.get(k, 0) > 0 for row in rows)]
    return _stacks(list(results), rows, keys, "seconds per step", title, 1.0, out_path)


def jobs_gantt(result, out_path: str | None = None, title: str | None = None, max_jobs: int = 40):
    """A cluster schedule (simulator.cluster_scheduling.Result): one row per job, waiting (light) from
    arrival to first start, running (dark, thickness by GPUs) to its finish; GPUs in use underneath."""
    plt = _pyplot()
    jobs = sorted(result.jobs, key=lambda j: (j.arrival_s, j.id))[:max_jobs]
    fig, (ax, ax_use) = plt.subplots(2, 1, figsize=(11, 0.22 * len(jobs) + 3.5), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
    unit = 3600.0 if max(j.finish_s for j in jobs) > 7200 else 1.0
    name = "h" if unit > 1 else "s"
    biggest = max(j.gpus for j in jobs)
    for i, j in enumerate(jobs):
        ax.barh(i, (j.start_s - j.arrival_s) / unit, left=j.arrival_s / unit, height=0.3, color="#f2c48d")
        ax.barh(i, (j.finish_s - j.start_s) / unit, left=j.start_s / unit, height=0.3 + 0.5 * j.gpus / biggest,
                color="#1f5f99" if not j.preemptions else "#9b3d3d")
        ax.text(j.finish_s / unit, i, f" {j.gpus}", va="center", fontsize=6)
    ax.set_yticks(range(len(jobs)))
    ax.set_yticklabels([f"job {j.id}" for j in jobs], fontsize=6)
    ax.invert_yaxis()
    ax.set_title(title or f"{result.policy}{' + backfill' if result.backfill else ''}: waiting (light), "
                          f"running (dark, height by GPUs, red if preempted)")
    ts = [t / unit for t, _ in result.usage]
    ax_use.step(ts, [u for _, u in result.usage], where="post")
    ax_use.axhline(result.gpus, color="gray", lw=0.8, ls="--")
    ax_use.set_ylabel("GPUs busy")
    ax_use.set_xlabel(f"time ({name})")
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


# ---------------------------------------------------------------------------------------------
# labs 07-10 and 12: curves, staleness, straggler timelines, stacked bars
# ---------------------------------------------------------------------------------------------

def line_chart(curves: dict, xlabel: str, ylabel: str, title: str = "", logx: bool = False, logy: bool = False,
               marks: dict | None = None, hline: float | None = None, out_path: str | None = None):
    """Curves {label: (xs, ys)}: labels starting with 'measured' or 'simulated' are drawn as points, the
    others as lines; `marks` {label: x} draws labelled vertical lines (an optimum, a crossover); `hline`
    a dashed horizontal reference (1.0 for a ratio). Returns the figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in curves.items():
        style = "o" if label.startswith("measured") else "x" if label.startswith("simulated") else "-"
        ax.plot(list(xs), list(ys), style, label=label, ms=6, lw=1.5)
    for label, x in (marks or {}).items():
        ax.axvline(x, ls=":", color="black", lw=1)
        ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    if hline is not None:
        ax.axhline(hline, ls="--", color="gray", lw=1)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def staleness_bars(histograms: dict, out_path: str | None = None, title: str = "staleness of the applied gradients"):
    """Grouped bars of {label: {staleness: pushes}}, each normalised to its share of the pushes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    keys = sorted({int(s) for h in histograms.values() for s in h})
    width = 0.8 / max(len(histograms), 1)
    for k, (label, hist) in enumerate(histograms.items()):
        total = sum(hist.values()) or 1
        shares = [sum(c for s, c in hist.items() if int(s) == key) / total for key in keys]
        ax.bar([x + (k - (len(histograms) - 1) / 2) * width for x in range(len(keys))], shares, width, label=label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([str(s) for s in keys])
    ax.set_xlabel("staleness (updates applied since the gradient's weights were read)")
    ax.set_ylabel("share of pushes")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


TIMELINE_COLORS = {"compute": "#1f5f99", "waiting": "#e6e6e6", "dropped": "#f2b8b8", "all_reduce": "#e6862e"}


def straggler_gantt(policies: dict, seconds_per_seq, comm_s: float = 0.0, out_path: str | None = None,
                    title: str = "one data-parallel step with a straggler"):
    """One panel per policy {name: (shares, used)}: shares[i] sequences on rank i at seconds_per_seq[i]
    each, `used` the ranks whose gradient enters the update (backup workers drop the rest). Compute
    (blue), waiting at the barrier (grey), dropped work (red), then the all-reduce (orange)."""
    plt = _pyplot()
    n = len(seconds_per_seq)
    fig, axes = plt.subplots(len(policies), 1, figsize=(8, 0.9 + 0.45 * n * len(policies)), squeeze=False,
                             sharex=True)
    for ax, (name, (shares, used)) in zip(axes[:, 0], policies.items()):
        finish = [s * t for s, t in zip(shares, seconds_per_seq)]
        barrier = max(f for i, f in enumerate(finish) if i in used)
        for i in range(n):
            done = min(finish[i], barrier)
            ax.barh(i, done, color=TIMELINE_COLORS["compute" if i in used else "dropped"], height=0.7)
            if done < barrier:
                ax.barh(i, barrier - done, left=done, color=TIMELINE_COLORS["waiting"], height=0.7)
            if comm_s:
                ax.barh(i, comm_s, left=barrier, color=TIMELINE_COLORS["all_reduce"], height=0.7)
            ax.annotate(f"{shares[i]:g} seq", (0, i), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=7, color="white")
        ax.set_yticks(range(n))
        ax.set_yticklabels([f"rank {i}" for i in range(n)], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{name}: step {barrier + comm_s:.2f} s", fontsize=9)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(f"{title} (blue: compute, grey: waiting, red: dropped, orange: all-reduce)", fontsize=9)
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def stacked_bars(rows: dict, parts, ylabel: str, title: str = "", scale: float = 1.0, out_path: str | None = None):
    """Stacked bars {label: {part: value}} for the given `parts` (values x scale). Returns the figure."""
    return _stacks(list(rows), list(rows.values()), list(parts), ylabel, title, scale, out_path)
