"""How long the simulator takes to simulate one step, and how that grows with GPUs, stages and micro-batches.

    .venv/bin/python benchmarks/simulator_speed.py                 # print the markdown tables
    .venv/bin/python benchmarks/simulator_speed.py --write docs/simulator/speed.md

Times are CPU seconds of one core (time.process_time) for a whole `simulate()` call: building the cluster
graph for the groups it needs, timing the collectives on it, the event-by-event pipeline and the
data-parallel streams. Each figure is the best of `--repeat` runs; nothing is cached between runs.
"""

from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simulator.cli_args import Parser  # noqa: E402
from simulator.config import load_config  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

# The reference job: Llama-3-405B on 16,384 H100 (TP 8, PP 16, DP 128, sequence 8192,
# 2048 sequences per step, micro-batch 1, 1F1B). ZeRO-1, sequence parallelism and full recomputation
# make it fit in 80 GB, so a full step is simulated (a layout that does not fit stops before timing).
REFERENCE = {"model": {"preset": "llama3-405b"}, "seq_len": 8192,
             "cluster": {"gpu": "h100-sxm", "num_gpus": 16384},
             "parallel": {"tp": 8, "pp": 16, "micro_batch_size": 1, "global_batch_size": 2048, "schedule": "1f1b",
                          "zero_stage": 1, "sequence_parallel": True, "activation_checkpointing": "full"},
             "training": {"precision": "bf16"}}


def timed(raw: dict, overrides=(), repeat: int = 3) -> tuple:
    cfg = load_config(raw, list(overrides))      # Llama 3 405B's layout: the course's ZeRO-1 under tp x pp
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = simulate(cfg)
        best = min(best, time.process_time() - start)
    return best, result, cfg


def row(label, raw, overrides, repeat):
    sec, r, cfg = timed(raw, overrides, repeat)
    p = cfg.parallel
    fits = r["fits_in_memory"]
    return (f"| {label} | {cfg.cluster.num_gpus:,} | {p.pp} | {cfg.grad_accum_steps} | "
            f"{r.get('simulated_ranks', '-') if fits else '-'} | {r.get('pipeline_events', '-') if fits else '-'} | "
            f"{sec:.3f} |")


HEADER = ("| case | GPUs | stages p | micro-batches m | simulated ranks | pipeline events | CPU seconds |\n"
          "|---|---:|---:|---:|---:|---:|---:|")


def tables(repeat: int) -> str:
    out = []
    sec, r, cfg = timed(REFERENCE, repeat=repeat)
    out += ["### The reference step", "",
            f"Llama-3-405B, 16,384 x H100, TP 8 x PP 16 x DP 128, sequence 8192, 2048 sequences per step, 1F1B: "
            f"**{sec:.3f} s** of one core for one step "
            f"({r['pipeline_events']:,} pipeline events on {r['simulated_ranks']} simulated ranks; predicted step "
            f"{r['step_time_s']:.2f} s, MFU {100 * r['mfu']:.1f}%).", ""]
    out += ["### Growing the number of GPUs (data parallel; TP 8, PP 16, m = 16)", "", HEADER]
    for dp in (1, 8, 32, 128):
        gb = 16 * dp
        out.append(row(f"dp {dp}", REFERENCE, [f"cluster.num_gpus={8 * 16 * dp}", f"parallel.global_batch_size={gb}"],
                       repeat))
    out += ["", "### Growing the number of stages (TP 8, DP 16, m = 64)", "", HEADER]
    for pp in (8, 16, 32, 63):       # 405B on 4 stages does not fit in 80 GB (fp32 main gradients)
        out.append(row(f"pp {pp}", REFERENCE, [f"parallel.pp={pp}", f"cluster.num_gpus={8 * 16 * pp}",
                                               "parallel.global_batch_size=1024"], repeat))
    out += ["", "### Growing the number of micro-batches (TP 8, PP 16, DP 16)", "", HEADER]
    for m in (16, 64, 256, 1024):
        out.append(row(f"m {m}", REFERENCE, ["cluster.num_gpus=2048", f"parallel.global_batch_size={16 * m}"],
                       repeat))
    return "\n".join(out)


DOC = """# Simulator speed

How much CPU one simulated step costs, measured by

    .venv/bin/python benchmarks/simulator_speed.py --write docs/simulator/speed.md

on {machine} (Python {python}), load average {load} when it started (CPU seconds of a process rise on a
machine shared with other busy processes). Every number below is written by that command.

Why it is fast: the dp x tp copies of a pipeline rank behave alike, so one pipeline of p ranks stands for the
job (16 simulated ranks for 16,384 GPUs); the collectives of each group are timed once per message size on
the cluster graph (only the nodes the groups touch are built), and the identical steps of a ring are one
max-min computation each. The pipeline itself is simulated event by event (every forward, backward and send
is a SimPy event), so its cost grows with p x m, while the cost of a larger data-parallel degree is the
size of one ring step on the graph.

{tables}
"""


def main() -> None:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", metavar="FILE", help="write the docs page")
    args = parser.parse_args()
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"
    text = tables(args.repeat)
    if args.write:
        with open(args.write, "w") as f:
            f.write(DOC.format(machine=platform.processor() or platform.machine(), python=platform.python_version(),
                               load=load, tables=text))
    print(text)


if __name__ == "__main__":
    main()
