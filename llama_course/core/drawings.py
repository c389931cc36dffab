"""Drawings of each parallelism for the docs: per rank, what it holds (shaded: its shard) and, along time,
what it computes and what it sends (SVG written by hand, so the files are small, crisp and byte-for-byte
reproducible: tests/test_docs.py regenerates them and compares with the committed ones).

    python -m llama_course.core.drawings docs/concepts/img        # rewrite every drawing

The pipeline drawings are laid out by the simulator's own schedules (`simulator.pipeline_parallel`: 1F1B, and
zero bubble beside it) and the 3-D grid by its rank layout (`simulator.parallel_3d.Layout`), so a drawing cannot
disagree with the code.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

from simulator.parallel_3d import Layout
from simulator.pipeline_parallel import TASK_NAMES, peak_in_flight, schedule_order, simulate_pipeline

COLORS = {"params": "#5c6bc0", "grads": "#ef6c00", "optim": "#2e7d32", "forward": "#90caf9",
          "backward": "#1e88e5", "backward_weight": "#66bb6a", "comm": "#ffb74d", "optimizer": "#a5d6a7",
          "idle": "#eeeeee", "line": "#424242"}
LANE, TOP, LEFT, HOLD_W, T0 = 46, 80, 86, 210, 320          # lane height, first lane, label and "holds" columns


class Svg:
    """A few SVG primitives; `text()` returns the document."""

    def __init__(self, width: int, height: int, title: str, subtitle: str):
        self.w, self.h = width, height
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                      f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
                      "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" "
                      "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" "
                      f"fill=\"{COLORS['line']}\"/></marker>"
                      "<pattern id=\"idle\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
                      "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#f5f5f5\"/>"
                      "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#bdbdbd\" stroke-width=\"2\"/></pattern></defs>",
                      f'<rect width="{width}" height="{height}" fill="white"/>']
        self.label(12, 22, title, size=15, weight="bold")
        self.para(12, 40, subtitle, size=11, fill="#555")

    def para(self, x, y, s, size=10, fill="#212121", chars=None):
        """Text wrapped at about the width left of x (0.56 em per character)."""
        chars = chars or int((self.w - x - 10) / (0.56 * size))
        line, lines = "", []
        for word in s.split():
            if line and len(line) + 1 + len(word) > chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        for i, text in enumerate(lines + [line]):
            self.label(x, y + i * (size + 3), text, size=size, fill=fill)

    def label(self, x, y, s, size=11, anchor="start", weight="normal", fill="#212121"):
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                          f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def box(self, x, y, w, h, fill, text="", stroke="#616161", text_fill="#212121", size=10):
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="2" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="0.8"/>')
        if text:
            self.label(x + w / 2, y + h / 2 + size * 0.35, text, size=size, anchor="middle", fill=text_fill)

    def arrow(self, x1, y1, x2, y2, dashed=False, color=None):
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="'
                          f'{color or COLORS["line"]}" stroke-width="1.2"{dash} marker-end="url(#arrow)"/>')

    def text(self) -> str:
        return "\n".join(self.parts + ["</svg>"]) + "\n"


def _lanes(svg: Svg, names: list, holds: dict, n_shards: int, time_label: str) -> None:
    """Rank labels, and per rank its params / grads / optimizer state as n_shards cells (filled: held)."""
    svg.label(LEFT + 4, TOP - 8, "holds (filled: this rank's part)", size=10, fill="#555")
    svg.label(T0, TOP - 8, time_label, size=10, fill="#555")
    for i, name in enumerate(names):
        y = TOP + i * LANE
        svg.label(12, y + LANE / 2 + 2, name, size=11, weight="bold")
        for j, kind in enumerate(("params", "grads", "optim")):
            x0, cell = LEFT + 4 + j * (HOLD_W // 3), (HOLD_W // 3 - 10) / n_shards
            for s in range(n_shards):
                held = holds[name][kind](s)
                svg.box(x0 + s * cell, y + 8, cell, 14, COLORS[kind] if held else "white")
            svg.label(x0 + (HOLD_W // 3 - 10) / 2, y + 36, {"optim": "optimizer"}.get(kind, kind), size=9,
                      anchor="middle", fill="#555")


def _legend(svg: Svg, y: float, items) -> None:
    x = 12
    for name, fill in items:
        svg.box(x, y - 10, 14, 12, fill)
        svg.label(x + 19, y, name, size=10)
        x += 34 + 6.2 * len(name)


def data_parallel(n: int = 4) -> str:
    """DDP: full replicas; gradient buckets all-reduced while backward runs, the last one exposed."""
    names = [f"rank {r}" for r in range(n)]
    svg = Svg(860, TOP + n * LANE + 60, "Data parallel (DDP): every rank a full replica, gradients averaged",
              f"{n} ranks, each on 1/{n} of the batch; buckets of gradients are all-reduced (2(N-1)/N of their "
              "bytes per rank) while backward continues")
    _lanes(svg, names, {name: {k: (lambda s: True) for k in ("params", "grads", "optim")} for name in names}, 1,
           "time: forward, backward (bucket all-reduces on the communication stream), optimizer")
    scale = 40
    for i in range(n):
        y = TOP + i * LANE
        svg.box(T0, y + 4, 3 * scale, 16, COLORS["forward"], "forward")
        svg.box(T0 + 3 * scale, y + 4, 6 * scale, 16, COLORS["backward"], "backward", text_fill="white")
        for b, start in enumerate((5.0, 7.0, 9.0)):
            svg.box(T0 + start * scale, y + 24, 1.6 * scale, 14, COLORS["comm"], f"all-reduce b{b}", size=9)
        svg.box(T0 + 10.6 * scale, y + 4, 1.0 * scale, 16, COLORS["optimizer"], "opt", size=9)
    x = T0 + 9.8 * scale
    svg.arrow(x, TOP + n * LANE + 6, x, TOP + n * LANE - 8)
    svg.label(x - 6, TOP + n * LANE + 12, "the last bucket sticks out past backward: exposed communication", size=10,
              anchor="end")
    _legend(svg, TOP + n * LANE + 40, [("params", COLORS["params"]), ("grads", COLORS["grads"]),
                                       ("optimizer state", COLORS["optim"]), ("all-reduce", COLORS["comm"])])
    return svg.text()


def zero3(n: int = 4) -> str:
    """ZeRO-3 / FSDP: every state sharded 1/N; weights all-gathered per layer, gradients reduce-scattered."""
    names = [f"rank {r}" for r in range(n)]
    svg = Svg(860, TOP + n * LANE + 72, "ZeRO-3 / FSDP: params, grads and optimizer state sharded 1/N",
              "a layer's weights are all-gathered just before its forward and again before its backward, then "
              "freed; its gradients are reduce-scattered (ZeRO-1 shards the optimizer only, ZeRO-2 also grads)")
    own = {name: {k: (lambda s, r=r: s == r) for k in ("params", "grads", "optim")} for r, name in enumerate(names)}
    _lanes(svg, names, own, n, "time: two layers, forward then backward; optimizer on the rank's own shard")
    scale = 52
    compute = [("F1", 1, 2, "forward"), ("F2", 2, 3, "forward"), ("B2", 4, 6, "backward"), ("B1", 6, 8, "backward"),
               ("opt", 9, 9.8, "optimizer")]
    comm = [("gather W1", 0, 1), ("gather W2", 1, 2), ("gather W2", 3, 4), ("gather W1", 4.6, 5.6),
            ("scatter g2", 6, 7), ("scatter g1", 8, 9)]
    for i in range(n):
        y = TOP + i * LANE
        for text, a, b, kind in compute:
            svg.box(T0 + a * scale, y + 4, (b - a) * scale, 16, COLORS[kind], text, size=9,
                    text_fill="white" if kind == "backward" else "#212121")
        for text, a, b in comm:
            svg.box(T0 + a * scale, y + 24, (b - a) * scale, 14, COLORS["comm"], text, size=8)
    svg.para(T0, TOP + n * LANE + 12, "all-gather: each rank receives the other (N-1)/N of a layer; "
             "reduce-scatter: each keeps the sum of its 1/N of the gradients")
    _legend(svg, TOP + n * LANE + 54, [("params", COLORS["params"]), ("grads", COLORS["grads"]),
                                       ("optimizer state", COLORS["optim"]), ("all-gather / reduce-scatter",
                                                                              COLORS["comm"])])
    return svg.text()


def tensor_parallel(t: int = 2) -> str:
    """Megatron MLP on t ranks: W1 split by columns, W2 by rows; f and g are the only communication."""
    names = [f"rank {r}" for r in range(t)]
    svg = Svg(860, TOP + t * 2 * LANE + 70, "Tensor parallel (Megatron): each matmul split over the t ranks",
              "W1 by columns (rank r: A_r), W2 by rows (B_r): X A_r and Y_r B_r need no communication; f and g "
              "each all-reduce once (g forward, f backward)")
    for r, name in enumerate(names):
        y = TOP + r * 2 * LANE
        svg.label(12, y + LANE / 2 + 2, name, size=11, weight="bold")
        for c in range(t):                                        # W1: t columns, W2: t rows
            svg.box(LEFT + 10 + c * 26, y + 4, 24, 48, COLORS["params"] if c == r else "white")
            svg.box(LEFT + 100, y + 4 + c * 25, 60, 23, COLORS["params"] if c == r else "white")
        svg.label(LEFT + 10 + t * 13, y + 66, "W1 columns", size=9, anchor="middle", fill="#555")
        svg.label(LEFT + 130, y + 66, "W2 rows", size=9, anchor="middle", fill="#555")
        steps = [("f: identity", 0, 1.4, "idle"), ("X A_r", 1.4, 3.4, "forward"), ("Y_r B_r (partial)", 3.4, 6.2,
                 "forward"), ("g: all-reduce", 6.2, 8.4, "comm"), ("g: identity", 9, 10.4, "idle"),
                 ("backward", 10.4, 14.4, "backward"), ("f: all-reduce dX", 14.4, 17.0, "comm")]
        for text, a, b, kind in steps:
            svg.box(T0 + a * 31, y + 14, (b - a) * 31, 22, COLORS[kind], text, size=9,
                    text_fill="white" if kind == "backward" else "#212121")
    for a in (7.3, 15.7):
        x = T0 + a * 31
        svg.arrow(x, TOP + 36, x, TOP + 2 * LANE + 12)
        svg.arrow(x, TOP + 2 * LANE + 12, x, TOP + 38)
    svg.para(T0, TOP + t * 2 * LANE + 8, "forward, then backward: per block and micro-batch, 2 all-reduces of "
             "b s h activations each way (attention and MLP), on the critical path")
    _legend(svg, TOP + t * 2 * LANE + 44, [("weight shard held", COLORS["params"]), ("all-reduce", COLORS["comm"]),
                                           ("forward", COLORS["forward"]), ("backward", COLORS["backward"])])
    return svg.text()


def _schedule_boxes(svg: Svg, run, x0: float, y0: float, lane: float, scale: float) -> None:
    """Every task of a simulated pipeline step on its rank's lane, labelled F<i> / B<i> / W<i> (micro-batch i),
    over a hatched bar: whatever stays visible of it is idle time."""
    for r in range(run.p):
        svg.box(x0, y0 + r * lane + 4, run.makespan * scale, 22, "url(#idle)", stroke="#e0e0e0")
    for task in run.tasks:
        kind = TASK_NAMES[task.kind]
        svg.box(x0 + task.start * scale, y0 + task.rank * lane + 4, (task.end - task.start) * scale, 22,
                COLORS[kind], f"{task.kind}{task.micro_batch}", size=9,
                text_fill="white" if kind == "backward" else "#212121")


def pipeline_parallel(p: int = 4, m: int = 6) -> str:
    """1F1B on p stages, laid out by the simulator's own schedule; sends between stages, idle time hatched."""
    run = simulate_pipeline("1f1b", p, m, 1, [1.0] * p, [2.0] * p)
    names = [f"stage {r}" for r in range(p)]
    scale = (860 - T0 - 20) / run.makespan
    svg = Svg(860, TOP + p * LANE + 60, f"Pipeline parallel, 1F1B: {p} stages, {m} micro-batches",
              f"rank r holds layers r of {p} groups; only activations (forward) and their gradients (backward) "
              "cross a stage boundary; hatched: the bubble, (p-1)/(m+p-1) of the step")
    holds = {name: {k: (lambda s, r=r: s == r) for k in ("params", "grads", "optim")} for r, name in enumerate(names)}
    _lanes(svg, names, holds, p, "time (forward 1 unit, backward 2), from simulator.pipeline_parallel")
    _schedule_boxes(svg, run, T0, TOP, LANE, scale)
    for src, dst, kind, _mb, start, _end in run.sends:
        if kind == "F":
            x = T0 + start * scale
            svg.arrow(x, TOP + src * LANE + 26, x + 6, TOP + dst * LANE + 4, color="#757575")
    _legend(svg, TOP + p * LANE + 40, [("forward", COLORS["forward"]), ("backward", COLORS["backward"]),
                                       ("bubble (idle)", "url(#idle)"), ("layers held", COLORS["params"])])
    return svg.text()


def zero_bubble(p: int = 4, m: int = 6) -> str:
    """1F1B above zero bubble (ZB-H1) on p stages, both laid out by the simulator on one time axis: forward 1
    unit, backward 2, which zero bubble runs as B (input gradient, 1) and a deferred W (weight gradient, 1)."""
    runs = {s: simulate_pipeline(s, p, m, 1, [1.0] * p, [2.0] * p) for s in ("1f1b", "zero_bubble")}
    peaks = {s: max(peak_in_flight(schedule_order(s, p, m, 1, r), [1]) for r in range(p)) for s in runs}
    lane, top, x0 = 30, 104, 96
    scale = (860 - x0 - 20) / max(r.makespan for r in runs.values())
    svg = Svg(860, top + 2 * p * lane + 96, f"Zero bubble (ZB-H1) against 1F1B: {p} stages, {m} micro-batches",
              f"backward = B, the input gradient dX = dY W the previous stage waits for, + W, the weight gradient "
              f"dW = dY^T X nobody waits for: stage r holds back the W of its first r backwards and runs them "
              f"where 1F1B idles. Forward 1 unit, B 1, W 1: 1F1B takes {runs['1f1b'].makespan:g} units, ZB-H1 "
              f"{runs['zero_bubble'].makespan:g}; peak micro-batches in flight {peaks['1f1b']:g} and "
              f"{peaks['zero_bubble']:g}")
    for g, (schedule, run) in enumerate(runs.items()):
        y0 = top + g * (p * lane + 34)
        name = {"1f1b": "1F1B (B: the whole backward, dX and dW)", "zero_bubble": "ZB-H1"}[schedule]
        svg.parts.append(f'<g id="{schedule}">')
        svg.label(12, y0 - 6, f"{name}: {run.makespan:g} units, idle {1 - m * 3 / run.makespan:.0%} of the step",
                  size=11, weight="bold")
        for r in range(p):
            svg.label(12, y0 + r * lane + 19, f"stage {r}", size=10)
        _schedule_boxes(svg, run, x0, y0, lane, scale)
        svg.parts.append("</g>")
    x, y1 = x0 + runs["zero_bubble"].makespan * scale, top + 2 * p * lane + 34
    svg.parts.append(f'<line x1="{x:.1f}" y1="{top - 2:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="#c62828" '
                     'stroke-width="1.2" stroke-dasharray="4 3"/>')
    svg.label(x + 4, y1 - 2, "ZB-H1 ends", size=9, fill="#c62828")
    _legend(svg, y1 + 28, [("forward F", COLORS["forward"]), ("input gradient B", COLORS["backward"]),
                           ("weight gradient W (deferred)", COLORS["backward_weight"]), ("bubble (idle)",
                                                                                         "url(#idle)")])
    return svg.text()


def parallel_3d(tp: int = 2, dp: int = 2, pp: int = 2) -> str:
    """The DP x TP x PP grid: rank = tp_rank + t (dp_rank + d pp_rank), groups from simulator.parallel_3d."""
    grid = Layout(tp=tp, dp=dp, pp=pp, vpp=1)
    svg = Svg(860, 340, f"3-D parallelism: {dp} (data) x {tp} (tensor) x {pp} (pipeline) = {dp * tp * pp} ranks",
              "tensor-parallel pairs sit on one node (NVLink, all-reduce every layer); data-parallel replicas "
              "all-reduce gradients once a step; pipeline stages send activations")
    for q in range(pp):
        x0 = 40 + q * 420
        svg.label(x0, 78, f"pipeline stage {q} (layers {q + 1} of {pp})", size=12, weight="bold")
        for d in range(dp):
            y0 = 92 + d * 110
            group = grid.tp_group(d, q)
            svg.box(x0 - 8, y0 - 6, 300, 86, "#fff8e1", stroke="#ffb300")
            svg.label(x0, y0 + 74, f"tp group {group} (one node): all-reduce activations", size=9, fill="#8d6e00")
            for t_rank, rank in enumerate(group):
                svg.box(x0 + t_rank * 146, y0, 130, 56, COLORS["forward"], "")
                svg.label(x0 + t_rank * 146 + 65, y0 + 24, f"rank {rank}", size=12, anchor="middle", weight="bold")
                svg.label(x0 + t_rank * 146 + 65, y0 + 42, f"tp {t_rank}, dp {d}, pp {q}", size=10, anchor="middle")
        for t_rank in range(tp):                                    # data-parallel pairs: same tp rank and stage
            x = x0 + t_rank * 146 + 65
            svg.arrow(x, 92 + 56, x, 92 + 110)
            svg.arrow(x, 92 + 110, x, 92 + 56)
    for d in range(dp):                                             # pipeline sends between stages
        y = 92 + d * 110 + 28
        svg.arrow(40 + 300 - 8, y, 40 + 420 - 8, y)
    svg.para(40, 308, f"dp groups {[grid.dp_group(t, q) for q in range(pp) for t in range(tp)]} (vertical arrows: "
              f"gradient all-reduce); pp groups {[grid.pp_group(t, d) for d in range(dp) for t in range(tp)]} "
              "(horizontal: send/recv)")
    return svg.text()


def parameter_server(workers: int = 3, servers: int = 2) -> str:
    """Workers push gradient shards to the servers that own them and pull the new weights."""
    svg = Svg(860, 310, f"Parameter server: {workers} workers, {servers} servers",
              "server j owns a share f_j of the tensors and their optimizer state; each worker pushes its gradient "
              "of shard j to server j and pulls shard j's new weights (one round trip per server and step)")
    for j in range(servers):
        x = 200 + j * 320
        svg.box(x, 70, 220, 60, "#e8f5e9", stroke="#2e7d32")
        svg.label(x + 110, 92, f"server {j}", size=12, anchor="middle", weight="bold")
        svg.label(x + 110, 112, f"shard {j}: weights + optimizer state", size=10, anchor="middle")
    for w in range(workers):
        x = 90 + w * 260
        svg.box(x, 210, 180, 50, COLORS["forward"])
        svg.label(x + 90, 230, f"worker {w}", size=12, anchor="middle", weight="bold")
        svg.label(x + 90, 248, "full replica: forward, backward", size=10, anchor="middle")
        for j in range(servers):
            sx = 200 + j * 320 + 60 + 100 * (w / max(workers - 1, 1))
            svg.arrow(x + 70 + j * 40, 210, sx, 132)                     # push gradient shard j
            svg.arrow(sx + 8, 132, x + 80 + j * 40, 210, dashed=True)    # pull weights of shard j
    svg.para(12, 288, "solid: push gradients (N f_j Psi g bytes into server j); dashed: pull weights "
              "(N f_j Psi e out): a server's link carries N/k times a worker's traffic")
    return svg.text()


DRAWINGS = {"data_parallel": data_parallel, "zero3": zero3, "tensor_parallel": tensor_parallel,
            "pipeline_parallel": pipeline_parallel, "zero_bubble": zero_bubble, "parallel_3d": parallel_3d,
            "parameter_server": parameter_server}


def write_drawings(folder) -> list:
    """Write every drawing as folder/<name>.svg; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DRAWINGS.items():
        path = folder / f"{name}.svg"
        path.write_text(draw(), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_drawings(sys.argv[1] if len(sys.argv) > 1 else "docs/concepts/img"):
        print(written)
