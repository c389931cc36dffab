"""Figures shared by the demo, the labs and the docs (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

import json


def _plt():
    import matplotlib

    if "inline" not in matplotlib.get_backend().lower():      # keep a notebook's inline backend: figures show
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_loss(runs: dict, path: str | None = None, title: str = "training loss", x: str = "step"):
    """Loss curves of one or more runs: {label: [metric records]}; val_loss points where present.

    x is "step" or "time" (cumulative step_time_s). Returns the figure; saves a PNG when path is given.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, records in runs.items():
        xs, t = [], 0.0
        for r in records:
            t += r.get("step_time_s", 0.0)
            xs.append(r["step"] if x == "step" else t)
        line, = ax.plot(xs, [r["loss"] for r in records], label=f"{label} train", lw=1.2)
        val = [(xv, r["val_loss"]) for xv, r in zip(xs, records) if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{label} held-out", ms=4)
    ax.set_xlabel("optimizer step" if x == "step" else "wall time (s)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def plot_memory_stack(rows: dict, path: str | None = None, title: str = "memory per GPU",
                      limit_bytes: float | None = None, parts=("params", "grads", "optimizer", "activations"),
                      unit: tuple = ("GiB per GPU", 2**30)):
    """Stacked bars of memory per GPU: {label: {"params": bytes, "grads": ..., "optimizer": ..., ...}}.

    A dashed line marks `limit_bytes` (the device's memory) when given. Any stack works with `parts` and
    `unit` = (axis label, divisor), e.g. a step-time breakdown in ms: parts=("compute", "exposed_comm"),
    unit=("ms per step", 1e-3). Returns the figure.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(rows)
    bottom = [0.0] * len(labels)
    for part in parts:
        values = [rows[k].get(part, 0.0) / unit[1] for k in labels]
        if any(values):
            ax.bar(labels, values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values)]
    if limit_bytes:
        ax.axhline(limit_bytes / unit[1], ls="--", color="black", lw=1, label="device memory")
    ax.set_ylabel(unit[0])
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def plot_bandwidth(curves: dict, path: str | None = None, title: str = "all-reduce bus bandwidth",
                   ylabel: str = "bus bandwidth (GB/s)"):
    """Bandwidth against message size on log-log axes: {label: (sizes in bytes, bytes/s)}; labels that
    start with 'predicted' are drawn dashed. Returns the figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (sizes, values) in curves.items():
        style = "--" if label.startswith("predicted") else "o-"
        ax.plot(sizes, [v / 1e9 for v in values], style, label=label, ms=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


STREAM_COLORS = {"forward": "#7fb3e6", "backward": "#1f5f99", "recompute": "#9ec9a0", "optimizer": "#999999",
                 "bubble": "#f2f2f2"}


def plot_streams(traces: dict, path: str | None = None, title: str = "one training step"):
    """Side-by-side Gantt charts of Chrome traces: {label: trace path | dict | events}, one panel each.

    Each rank gets two rows, compute and comm; communication spans are orange. Each panel starts at its
    first event, so a simulated and a measured step line up. Returns the figure.
    """
    plt = _plt()
    fig, axes = plt.subplots(len(traces), 1, figsize=(11, 1.6 + 1.3 * len(traces) * 2), squeeze=False)
    for ax, (label, trace) in zip(axes[:, 0], traces.items()):
        if isinstance(trace, str):
            with open(trace) as f:
                trace = json.load(f)
        events = trace["traceEvents"] if isinstance(trace, dict) else list(trace)
        spans = [e for e in events if e.get("ph") == "X" and e.get("tid") in ("compute", "comm")]
        if not spans:
            continue
        t0 = min(e["ts"] for e in spans)
        ranks = sorted({e["pid"] for e in spans})
        rows = [(r, s) for r in ranks for s in ("compute", "comm")]
        row = {key: i for i, key in enumerate(rows)}
        for e in spans:
            color = STREAM_COLORS.get(e["name"], "#e6862e" if e["tid"] == "comm" else "#cccccc")
            ax.barh(row[(e["pid"], e["tid"])], e["dur"] / 1e3, left=(e["ts"] - t0) / 1e3, height=0.8,
                    color=color, edgecolor="white", linewidth=0.3)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"rank {r} {s}" for r, s in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("time (ms)")
    fig.suptitle(f"{title} (light: forward, dark: backward, orange: communication, grey: optimizer)", fontsize=10)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def plot_roofline(points: dict, peak_flops: float, bandwidth: float, path: str | None = None,
                  title: str = "roofline"):
    """A roofline: attainable FLOP/s = min(peak, intensity x bandwidth), with kernels as points
    {label: (intensity FLOP/byte, achieved or attainable FLOP/s)}. Returns the figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    intensities = [i for i, _ in points.values()] + [peak_flops / bandwidth]
    lo, hi = min(intensities) / 4, max(intensities) * 4
    xs = [lo * (hi / lo) ** (k / 200) for k in range(201)]
    ax.plot(xs, [min(peak_flops, x * bandwidth) for x in xs], color="black", lw=1.5, label="roof")
    ax.axvline(peak_flops / bandwidth, color="grey", ls=":", lw=1, label=f"ridge {peak_flops / bandwidth:.0f} FLOP/B")
    for label, (i, f) in points.items():
        ax.plot([i], [f], "o", ms=6)
        ax.annotate(label, (i, f), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
