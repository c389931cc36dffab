"""Plots: a Gantt chart of a pipeline schedule from a Chrome trace (simulated or measured), for the labs.

One row per rank, forward tasks light, backward tasks dark, each labelled with its micro-batch; bubbles
are the white gaps. matplotlib is imported only when a plot is drawn (Agg backend, so it works headless).

    llama-course simulate configs/llama-7b-a100.yaml --set parallel.pp=4 --trace pp.json
    python -c "from simulator.plots import pipeline_gantt; pipeline_gantt('pp.json', 'pp.png')"
"""

from __future__ import annotations

from simulator.trace import read_trace

COLORS = {"forward": "#7fb3e6", "backward": "#1f5f99", "optimizer": "#999999"}


def pipeline_gantt(trace, out_path: str | None = None, title: str | None = None, labels: bool = True):
    """Draw the compute stream of every rank in `trace` (a path, a dict or a list of events).

    Returns the matplotlib Figure; saves it when `out_path` is given.
    """
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(trace, str):
        events = read_trace(trace)
    elif isinstance(trace, dict):
        events = trace["traceEvents"]
    else:
        events = list(trace)
    tasks = [e for e in events if e.get("ph") == "X" and e.get("tid") == "compute"]
    ranks = sorted({e["pid"] for e in tasks})
    row = {pid: i for i, pid in enumerate(ranks)}
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(ranks) + 1.5))
    unit, scale = ("ms", 1e-3)
    for e in tasks:
        start, dur = e["ts"] * scale, e["dur"] * scale
        ax.barh(row[e["pid"]], dur, left=start, height=0.8, color=COLORS.get(e["name"], "#cccccc"),
                edgecolor="white", linewidth=0.5)
        mb = (e.get("args") or {}).get("micro_batch")
        if labels and mb is not None and len(tasks) <= 600:
            ax.text(start + dur / 2, row[e["pid"]], str(mb), ha="center", va="center", fontsize=6,
                    color="white" if e["name"] == "backward" else "black")
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([f"rank {pid}" for pid in ranks])
    ax.invert_yaxis()
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title or "pipeline schedule (light: forward, dark: backward, gaps: bubble)")
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig
