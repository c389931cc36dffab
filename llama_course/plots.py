"""Figures shared by the demo, the labs and the docs (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations


def _plt():
    import matplotlib

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
