"""The compare suite: the simulator's `cpu` prediction against real gloo training, layout by layout.

    python benchmarks/compare_suite.py                   # the whole suite, writes docs/benchmarks/compare.md
    python benchmarks/compare_suite.py --repeat 3        # each layout 3 times, medians (a busy machine)
    python benchmarks/compare_suite.py --only "tp 2" --no-write

Every layout trains the `tiny` LLaMA of configs/tiny.yaml (seq 128, micro-batch 4, global batch 16, fp32,
the course's own engines) and is predicted by `simulate` with the `cpu` hardware profile: your machine's if
`llama-course bench` wrote one, else the shipped reference profile (simulator/profiles/cpu.json, measured
on the 2-core reference machine). The profile is calibrated once for the machine; nothing here is fitted
per layout. Per layout: `compare` (llama_course/compare.py) gives the predicted and measured step time
(median of the second half of the run) and the components from both traces.

Goal (issue 8): the predicted step time within 10% of the measured on average, within 20% on every layout.
Measurements on a shared 2-core machine are noisy: run it when the machine is quiet, or with --repeat
(medians over repeats); the table records the load average during each layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
BASE = ["training.eval_every=0", "parallel.implementation=course", "cluster.num_gpus=null"]
DP = ["parallel.tp=1", "parallel.pp=1"]
LAYOUTS = [
    # name, overrides
    ("dp 2 naive", DP + ["parallel.dp=2", "parallel.bucket_mb=0", "parallel.overlap=false"]),
    ("dp 2 bucketed", DP + ["parallel.dp=2", "parallel.bucket_mb=25", "parallel.overlap=true"]),
    ("dp 2 ZeRO-3", DP + ["parallel.dp=2", "parallel.zero_stage=3"]),
    ("dp 4 naive", DP + ["parallel.dp=4", "parallel.bucket_mb=0", "parallel.overlap=false"]),
    ("dp 4 bucketed", DP + ["parallel.dp=4", "parallel.bucket_mb=25", "parallel.overlap=true"]),
    ("dp 4 ZeRO-3", DP + ["parallel.dp=4", "parallel.zero_stage=3"]),
    ("tp 2", ["parallel.dp=1", "parallel.tp=2", "parallel.pp=1"]),
    ("pp 2 GPipe", ["parallel.dp=1", "parallel.tp=1", "parallel.pp=2", "parallel.schedule=gpipe"]),
    ("pp 2 1F1B", ["parallel.dp=1", "parallel.tp=1", "parallel.pp=2", "parallel.schedule=1f1b"]),
    ("parameter server BSP", DP + ["parallel.strategy=parameter_server", "parallel.dp=2", "parallel.num_servers=1",
                                   "parallel.sync=bsp"]),
    ("dp 2 straggler 2x", DP + ["parallel.dp=2", "parallel.bucket_mb=25", "faults.slow={1: 2}"]),
]
COMPONENTS = ("compute", "exposed_comm", "bubble", "optimizer")


def run_layout(name: str, overrides: list, steps: int, trace_root: str | None) -> dict:
    """One compare of one layout; {"name", "ok", ...}; an engine that is missing or fails is reported."""
    from llama_course.compare import compare

    trace_dir = os.path.join(trace_root, name.replace(" ", "_")) if trace_root else None
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        r = compare(CONFIG, BASE + overrides, trace_dir=trace_dir, steps=steps, quiet=True)
    except BaseException as e:          # noqa: BLE001 - a layout that cannot run is a row, not a crash
        if isinstance(e, KeyboardInterrupt):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return {"name": name, "ok": False, "error": f"{type(e).__name__}: {first}"}
    return {"name": name, "ok": True, "predicted": r["predicted"], "measured": r["measured"],
            "relative_error": r["relative_error"], "load": (load0 + os.getloadavg()[0]) / 2,
            "seconds": time.perf_counter() - t0}


def median_of(runs: list) -> dict:
    """One row from repeats of a layout: the run whose measured step time is the median."""
    good = [r for r in runs if r["ok"]]
    if not good:
        return runs[0]
    good.sort(key=lambda r: r["measured"]["step_time_s"])
    row = dict(good[(len(good) - 1) // 2])
    row["repeats"] = [r["measured"]["step_time_s"] for r in good]
    return row


def _ms(x):
    return "-" if x is None else f"{x * 1e3:.1f}"


def _pct(x):
    return "-" if x is None else f"{x:+.0%}"


def table(rows: list) -> str:
    lines = ["| layout | predicted ms | measured ms | error | compute p / m | exposed comm p / m | bubble p / m | "
             "optimizer p / m | load |",
             "|---|---:|---:|---:|---|---|---|---|---:|"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['name']} | - | - | missing | {r['error']} | | | | |")
            continue
        p, m, e = r["predicted"], r["measured"], r["relative_error"]
        cells = []
        for c in COMPONENTS:
            pc, mc = p["breakdown_s"].get(c), m["breakdown_s"].get(c)
            cells.append(f"{_ms(pc)} / {_ms(mc)}")
        lines.append(f"| {r['name']} | {_ms(p['step_time_s'])} | {_ms(m['step_time_s'])} | "
                     f"**{_pct(e['step_time_s'])}** | " + " | ".join(cells) + f" | {r['load']:.1f} |")
    return "\n".join(lines)


def summary(rows: list) -> dict:
    errs = [abs(r["relative_error"]["step_time_s"]) for r in rows if r["ok"]]
    return {"layouts": len(rows), "ran": len(errs), "missing": [r["name"] for r in rows if not r["ok"]],
            "mean_abs_error": statistics.mean(errs) if errs else None, "max_abs_error": max(errs) if errs else None,
            "within_20": sum(e <= 0.2 for e in errs)}


def load_note(rows: list) -> str:
    """How the error depends on the machine's load during the run (the measured side is wall time)."""
    ok = [r for r in rows if r["ok"]]
    if not ok:
        return ""
    quiet = [abs(r["relative_error"]["step_time_s"]) for r in ok if r["load"] <= 4]
    busy = [abs(r["relative_error"]["step_time_s"]) for r in ok if r["load"] > 4]
    parts = [f"{len(quiet)} layouts ran at a load of 4 or less (mean |error| "
             f"{statistics.mean(quiet):.0%})" if quiet else "no layout ran at a load of 4 or less",
             f"{len(busy)} above it (mean |error| {statistics.mean(busy):.0%})" if busy else "none above it"]
    lowest = min(ok, key=lambda r: r["load"])
    worst = max(ok, key=lambda r: abs(r["relative_error"]["step_time_s"]))
    return (f"Load and error: {parts[0]}, {parts[1]}; the quietest layout ({lowest['name']}, load "
            f"{lowest['load']:.1f}) is off by {lowest['relative_error']['step_time_s']:+.0%}, the worst "
            f"({worst['name']}) by {worst['relative_error']['step_time_s']:+.0%}. Reading the components: "
            "ZeRO-3 and tensor parallel issue their gathers and all-reduces inside forward and backward, so the "
            "runtime's compute spans include them (compare the step times, not those columns); pipeline and "
            "parameter-server exchanges are point-to-point sends and RPCs, which the profile prices from the link "
            "alone (latency and bandwidth measured back to back), so their exposed communication is under-"
            "predicted; and the course's per-tensor ring on 4 processes (dp 4 naive) is priced at what `bench` "
            "measures for it back to back, about 9 ms per small all-reduce, while inside training the same 40 "
            "all-reduces averaged about 4 ms each. The cost is bimodal on 4 processes sharing 2 cores: the same "
            "burst of a 16 KB course all-reduce, launched twice with torchrun on 2026-11-29, took 4.8-5.1 ms in "
            "one launch and 8.9 ms in the next (4 ranks each timing `collectives.ring_all_reduce` of 4096 floats "
            "with `bench._burst`, bursts of 8 and 40), depending on how the 4 processes fall into step on the cores; one profile "
            "number cannot price both.")


def write_doc(path: str, rows: list, args, profile: dict, profile_path: str, seconds: float,
              date: str | None = None) -> None:
    import torch

    date = date or time.strftime('%Y-%m-%d %H:%M')
    s = summary(rows)
    goal = (s["mean_abs_error"] is not None and s["mean_abs_error"] <= 0.10 and s["within_20"] == s["ran"]
            and not s["missing"])
    cmd = "python benchmarks/compare_suite.py" + (f" --repeat {args.repeat}" if args.repeat > 1 else "") \
        + (f" --steps {args.steps}" if args.steps != 20 else "")
    text = f"""# Simulator vs runtime: the compare suite

Generated by `{cmd}` on {date} ({os.cpu_count()} cores, {platform.machine()},
torch {torch.__version__}; {seconds / 60:.1f} minutes). Regenerate it with that one command.

Each row trains the `tiny` LLaMA of `configs/tiny.yaml` (seq 128, micro-batch 4, global batch 16, fp32,
{args.steps} steps, the course's own engines) under one layout and predicts it with `llama-course simulate`
on the `cpu` hardware profile (`{os.path.relpath(profile_path, ROOT) if profile_path.startswith(ROOT) else profile_path}`:
{profile.get('note', '')}). *predicted* / *measured* is one optimizer step (measured: median step of the
run's second half{', then the median over ' + str(args.repeat) + ' repeats' if args.repeat > 1 else ''}); error = (predicted - measured) / measured.
Components are per step and rank, p / m = predicted / measured, from the two Chrome traces (`compare`
takes them from the runtime's spans: DDP-style overlapped all-reduces inside the backward show as compute;
the measured optimizer span is the optimizer step alone, the predicted one includes the gradient norm).
*load* is the machine's 1-minute load average while the layout ran: this is a shared 2-core machine, and
a load above 2 means other processes took cores from the measurement.

{table(rows)}

**Mean |error| {_pct(s['mean_abs_error']).lstrip('+')}, largest {_pct(s['max_abs_error']).lstrip('+')}, {s['within_20']} of {s['ran']} layouts within 20%**{'' if not s['missing'] else ' (missing: ' + ', '.join(s['missing']) + ')'}.
Goal: mean within 10%, every layout within 20%: {'met' if goal else 'not met'}.

{load_note(rows)}

The `cpu` profile was measured once for the machine by `llama-course bench`, never per layout: the matmul
peak and copy bandwidth; the real model's forward-backward timed inside single-process train steps, from
which the per-kernel overhead and matmul efficiency are fitted; how many cores' worth of compute 2 and 4
processes get when they compute at once (`effective_cores`: 4 processes on these 2 cores get about 1.7);
and gloo's and the course's all-reduce against size for 2 and 4 processes, both *in situ* (issued right
after compute, as training issues a bucket or a tensor-parallel all-reduce: the partner has to be scheduled
again, 2-4x the fastest collective after a barrier) and *back to back* (the rest of an unbucketed sync).
How the simulator uses them is in `simulator/hardware.py`.

History: the profile shipped on 2026-11-28 (fastest collective after a barrier, compute fitted on
forward-backward loops, ideal core sharing, measured under a load of 15-30) gave a mean |error| of 52% under
load and 29% on the quiet machine on 2026-11-29 (`python benchmarks/compare_suite.py --no-write`, 2 of 11
layouts within 20%); the parameter server row was also 4x slower then (TensorPipe's shared-memory
transport busy-polled a core per process; RPC now uses its TCP transport).

Drift: bench now starts its multi-process measurements under torchrun, as training does (in processes
started by multiprocessing the 4-process course ring measured ~9 ms per small all-reduce, under torchrun
~3-4 ms, as inside training). A profile re-measured that way at 02:01 on 2026-11-29 priced dp 4 naive
right (-19%), but that half hour the machine ran faster in the bench than in the training runs that
followed: every other row came out 10-29% too fast, mean |error| 21%, 5 of 11 within 20%
(`python benchmarks/compare_suite.py --repeat 3` with that profile installed). On this shared VM the drift
between a calibration and a later run is as large as what is left of the model's error, so the shipped
profile stays the earlier one, whose note says how it was measured.
"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({"summary": s, "rows": rows, "profile": profile, "profile_path": profile_path, "date": date,
                   "repeat": args.repeat, "steps": args.steps, "seconds": seconds}, f, indent=1, default=str)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per layout; the median is reported")
    ap.add_argument("--only", action="append", help="run only the layouts with this name (repeatable)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "compare.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table, write no file")
    ap.add_argument("--trace-dir", help="keep both traces of every layout under this folder")
    ap.add_argument("--from-json", metavar="FILE", help="re-render the page from a previous run's compare.json")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        args.repeat, args.steps = saved.get("repeat", args.repeat), saved.get("steps", args.steps)
        write_doc(args.out, saved["rows"], args, saved["profile"], saved.get("profile_path", "simulator/profiles/cpu.json"),
                  saved.get("seconds", 0.0), saved.get("date"))
        print(f"wrote {args.out}")
        return 0
    os.environ.setdefault("LLAMA_COURSE_CACHE", os.path.join(ROOT, ".cache"))

    from simulator.hardware import CPU_PROFILE, user_cpu_profile_path

    profile_path = user_cpu_profile_path() if os.path.exists(user_cpu_profile_path()) else CPU_PROFILE
    with open(profile_path) as f:
        profile = json.load(f)
    layouts = [x for x in LAYOUTS if not args.only or x[0] in args.only]
    t0 = time.perf_counter()
    rows = []
    for name, overrides in layouts:
        runs = []
        for i in range(args.repeat):
            r = run_layout(name, overrides, args.steps, args.trace_dir)
            runs.append(r)
            state = (f"predicted {_ms(r['predicted']['step_time_s'])} ms, measured {_ms(r['measured']['step_time_s'])} ms"
                     f" ({_pct(r['relative_error']['step_time_s'])}), load {r['load']:.1f}") if r["ok"] else r["error"]
            print(f"{name} [{i + 1}/{args.repeat}]: {state}", file=sys.stderr, flush=True)
            if not r["ok"]:
                break
        rows.append(median_of(runs))
    print(table(rows))
    s = summary(rows)
    print(f"mean |error| {_pct(s['mean_abs_error'])}, largest {_pct(s['max_abs_error'])}, "
          f"{s['within_20']}/{s['ran']} within 20%, missing {s['missing']}")
    if not args.no_write:
        write_doc(args.out, rows, args, profile, profile_path, time.perf_counter() - t0)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
