"""The compare suite: the simulator's `cpu` prediction against real gloo training, layout by layout.

    python benchmarks/compare_suite.py --bench 3 --calibrate --repeat 3   # the documented run (~25 min)
    python benchmarks/compare_suite.py                   # on the profile in use, writes docs/benchmarks/compare.md
    python benchmarks/compare_suite.py --only "tp 2" --no-write
    python benchmarks/compare_suite.py --suite held-out --bench 3 --calibrate --repeat 3 --no-write

Every layout trains the `tiny` LLaMA of configs/tiny.yaml (seq 128, micro-batch 4, global batch 16, fp32,
the course's own engines) and is predicted by `simulate` with the `cpu` hardware profile: with --bench N,
one that `llama-course bench --repeat N` measures first, in the same sitting; else your machine's if
`bench` wrote one, else the shipped reference profile (simulator/profiles/cpu.json). Nothing is fitted per
layout. Per layout: `compare` (llama_course/commands/compare.py) gives the predicted and measured step time (median
of the second half of the run) and the components from both traces; with --calibrate it also times the
machine's speed right before and after the run and predicts at that speed (the uncalibrated error stays
in the table).

Goal (issue 8): the predicted step time within 10% of the measured on average, within 20% on every layout.
The held-out suite (HELD_OUT, issue 17 item 7) is reported uncalibrated on the profile measured the same day:
mean within 15%, worst within 25%, separable components within 25%.
Measurements on a shared 2-core machine are noisy: run it when the machine is quiet, with --repeat
(medians over repeats, run in rounds: every layout once, then again, so that each layout's repeats spread
over the sitting and no layout meets only one slow stretch); the table records the load average. The
held-out layouts run first, right after bench (their reading uses its profile as it is), the tuning layouts
after them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.compare_notes import PROFILE_AND_HISTORY, load_note  # noqa: E402
from benchmarks.compare_wait import INSEPARABLE, split_text, spread_text  # noqa: E402
from simulator.cli_args import Parser  # noqa: E402

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
HELD_OUT = [
    # name, overrides, optimizer steps (None: --steps): layouts, model sizes, sequence lengths and step counts the
    # CPU model was never tuned on (the profile's terms were chosen on LAYOUTS above). Reported uncalibrated.
    ("dp 3 bucketed", DP + ["parallel.dp=3", "parallel.bucket_mb=25", "parallel.overlap=true",
                            "parallel.global_batch_size=24"], None),
    ("dp 2 bucketed, seq 256", DP + ["parallel.dp=2", "parallel.bucket_mb=25", "seq_len=256",
                                     "parallel.micro_batch_size=2", "parallel.global_batch_size=8"], None),
    ("dp 2 naive, seq 64", DP + ["parallel.dp=2", "parallel.bucket_mb=0", "parallel.overlap=false", "seq_len=64",
                                 "parallel.micro_batch_size=8", "parallel.global_batch_size=32"], None),
    ("dp 2 bucketed, 40 steps", DP + ["parallel.dp=2", "parallel.bucket_mb=25", "parallel.overlap=true"], 40),
    ("small model dp 2 bucketed", DP + ["model.preset=small", "seq_len=256", "parallel.dp=2", "parallel.bucket_mb=25",
                                        "parallel.micro_batch_size=2", "parallel.global_batch_size=8"], None),
    ("small model pp 2 1F1B", ["model.preset=small", "seq_len=256", "parallel.dp=1", "parallel.tp=1", "parallel.pp=2",
                               "parallel.schedule=1f1b", "parallel.micro_batch_size=2",
                               "parallel.global_batch_size=8"], None),
    ("small model pp 2 zero bubble", ["model.preset=small", "seq_len=256", "parallel.dp=1", "parallel.tp=1",
                                      "parallel.pp=2", "parallel.schedule=zero_bubble", "parallel.micro_batch_size=2",
                                      "parallel.global_batch_size=8"], None),
]
SEPARABLE = {"compute", "exposed_comm"}
"""Components the runtime's traces separate cleanly on data-parallel and pipeline layouts (ZeRO-3's and tensor
parallelism's collectives run inside forward and backward, so their compute spans include communication; a
pipeline's blocking receive is measured as communication where the simulator says bubble: see load_note)."""
COMPONENT_FLOOR = 0.10
"""A component is held to its goal when it is at least this share of the measured step (smaller ones are noise)."""
COMPONENTS = ("compute", "exposed_comm", "bubble", "optimizer")


def run_layout(name: str, overrides: list, steps: int, trace_root: str | None, calibrate: bool = False) -> dict:
    """One compare of one layout; {"name", "ok", ...}; an engine that is missing or fails is reported."""
    from llama_course.commands.compare import compare

    trace_dir = os.path.join(trace_root, name.replace(" ", "_")) if trace_root else None
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        r = compare(CONFIG, BASE + overrides, trace_dir=trace_dir, steps=steps, quiet=True, calibrate=calibrate)
    except BaseException as e:          # noqa: BLE001 - a layout that cannot run is a row, not a crash
        if isinstance(e, KeyboardInterrupt):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return {"name": name, "ok": False, "error": f"{type(e).__name__}: {first}"}
    row = {"name": name, "ok": True, "predicted": r["predicted"], "measured": r["measured"],
           "relative_error": r["relative_error"], "load": (load0 + os.getloadavg()[0]) / 2,
           "seconds": time.perf_counter() - t0}
    if "speed" in r:
        row["speed_factor"] = r["speed"]["speed_factor"]
        row["uncalibrated"] = r["uncalibrated"]
    return row


def component_errors(row: dict) -> dict:
    """{component: relative error} of the SEPARABLE components that are at least COMPONENT_FLOOR of the measured
    step, on a data-parallel or pipeline layout without ZeRO-3 or tensor parallelism."""
    if not row["ok"] or any(k in row["name"] for k in INSEPARABLE):
        return {}
    p, m = row["predicted"]["breakdown_s"], row["measured"]["breakdown_s"]
    step = row["measured"]["step_time_s"]
    if "pp " in row["name"]:          # the receive wait is comm in the runtime, bubble in the simulator
        p = dict(p, exposed_comm=p.get("exposed_comm", 0) + p.get("bubble", 0))
        m = dict(m, exposed_comm=m.get("exposed_comm", 0) + m.get("bubble", 0))
    return {c: (p[c] - m[c]) / m[c] for c in sorted(SEPARABLE) if m.get(c) and m[c] >= COMPONENT_FLOOR * step}


def median_of(runs: list) -> dict:
    """One row from repeats of a layout: the run whose measured step time is the median."""
    good = [r for r in runs if r["ok"]]
    if not good:
        return runs[0]
    good.sort(key=lambda r: r["measured"]["step_time_s"])
    row = dict(good[(len(good) - 1) // 2])
    row["repeats"] = [r["measured"]["step_time_s"] for r in good]
    row["repeat_exposed_comm"] = [r["measured"]["breakdown_s"].get("exposed_comm", 0.0) for r in good]
    row["repeat_bubble"] = [r["measured"]["breakdown_s"].get("bubble", 0.0) for r in good]
    return row


def _ms(x):
    return "-" if x is None else f"{x * 1e3:.1f}"


def _pct(x):
    return "-" if x is None else f"{x:+.0%}"


def table(rows: list) -> str:
    cal = any("speed_factor" in r for r in rows)
    extra_head, extra_rule = (" speed | uncalibrated error |", "---:|---:|") if cal else ("", "")
    lines = ["| layout | predicted ms | measured ms | error | compute p / m | exposed comm p / m | bubble p / m | "
             "optimizer p / m | load |" + extra_head,
             "|---|---:|---:|---:|---|---|---|---|---:|" + extra_rule]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['name']} | - | - | missing | {r['error']} | | | | |" + (" | |" if cal else ""))
            continue
        p, m, e = r["predicted"], r["measured"], r["relative_error"]
        cells = []
        for c in COMPONENTS:
            pc, mc = p["breakdown_s"].get(c), m["breakdown_s"].get(c)
            cells.append(f"{_ms(pc)} / {_ms(mc)}")
        tail = ""
        if cal:
            u = r.get("uncalibrated")
            tail = (f" {r['speed_factor']:.2f} | {_pct(u['relative_error']['step_time_s'])} |" if u else " - | - |")
        lines.append(f"| {r['name']} | {_ms(p['step_time_s'])} | {_ms(m['step_time_s'])} | "
                     f"**{_pct(e['step_time_s'])}** | " + " | ".join(cells) + f" | {r['load']:.1f} |" + tail)
    return "\n".join(lines)


def uncalibrated(row: dict) -> dict:
    """The row as predicted on the profile as it is (no speed probe): the held-out suite's reading."""
    if not row["ok"] or "uncalibrated" not in row:
        return row
    u = row["uncalibrated"]
    out = {k: v for k, v in row.items() if k not in ("uncalibrated", "speed_factor")}
    return dict(out, predicted=u["predicted"], relative_error=u["relative_error"])


def held_out_summary(rows: list) -> dict:
    """The held-out suite's goal (issue 17 item 7), uncalibrated: mean |error| within 15%, worst within 25%, and
    the separable components within 25%."""
    rows = [uncalibrated(r) for r in rows]
    errs = [abs(r["relative_error"]["step_time_s"]) for r in rows if r["ok"]]
    comps = [abs(e) for r in rows for e in component_errors(r).values()]
    out = {"layouts": len(rows), "ran": len(errs), "missing": [r["name"] for r in rows if not r["ok"]],
           "mean_abs_error": statistics.mean(errs) if errs else None, "max_abs_error": max(errs) if errs else None,
           "components": len(comps), "components_within_25": sum(e <= 0.25 for e in comps)}
    out["goal_met"] = bool(errs) and not out["missing"] and out["mean_abs_error"] <= 0.15 \
        and out["max_abs_error"] <= 0.25 and out["components_within_25"] == out["components"]
    return out


def held_out_text(rows: list) -> str:
    if not rows:
        return ""
    h, shown = held_out_summary(rows), [uncalibrated(r) for r in rows]
    comp = "; ".join(f"{r['name']}: " + ", ".join(f"{c} {_pct(e)}" for c, e in component_errors(r).items())
                     for r in shown if component_errors(r))
    probed = [abs(r["relative_error"]["step_time_s"]) for r in rows if r["ok"] and "uncalibrated" in r]
    with_probe = (f"\nWith the speed probe (the same runs, predicted at the speed probed around each, as the tuning "
                  f"layouts are; not the goal's reading): mean |error| {statistics.mean(probed):.0%}, worst "
                  f"{max(probed):.0%}.\n" if probed else "")
    return f"""
## Held-out suite (never tuned on)

Layouts, sizes and lengths the CPU model's terms were not chosen on: a 3-process ring, sequence lengths 64
and 256, a 40-step run, the `small` model (8 layers, dim 256) with data and pipeline parallelism (1F1B and
zero bubble, a schedule added after every term was chosen). Reported
**uncalibrated**: predicted on the profile `bench` measured at the start of this run, without the speed probe;
these layouts run first, right after `bench`, the tuning layouts after them. Not chosen on, but not unseen:
their results in every kept run since 2026-12-06 were read while the model changed, so read a change that helps
them with that in mind (the last one, 2026-12-08: a gradient bucket is ready by the backward work its tensors
wait for, not by their bytes, motivated by a trace of the tuning layout dp 2 bucketed, where the bucket before
the embedding's launched 0.4 ms before the end of a 15 ms backward).

{table(shown)}

**Held out: mean |error| {_pct(h['mean_abs_error']).lstrip('+')}, worst {_pct(h['max_abs_error']).lstrip('+')};
{h['components_within_25']} of {h['components']} separable components within 25%** ({comp or 'none'}; a component
counts when it is at least {COMPONENT_FLOOR:.0%} of the measured step; pipeline rows compare communication + bubble).
Goal: mean within 15%, worst within 25%, components within 25%: {'met' if h['goal_met'] else 'not met'}
(this run; every kept run with the code as it is now: [compare_runs.md](compare_runs.md)).
{with_probe}{split_text(shown, brief=True)}{spread_text(shown)}"""


def summary(rows: list) -> dict:
    errs = [abs(r["relative_error"]["step_time_s"]) for r in rows if r["ok"]]
    out = {"layouts": len(rows), "ran": len(errs), "missing": [r["name"] for r in rows if not r["ok"]],
           "mean_abs_error": statistics.mean(errs) if errs else None, "max_abs_error": max(errs) if errs else None,
           "within_20": sum(e <= 0.2 for e in errs)}
    raw = [abs(r["uncalibrated"]["relative_error"]["step_time_s"]) for r in rows if r["ok"] and "uncalibrated" in r]
    if raw:
        out["uncalibrated"] = {"mean_abs_error": statistics.mean(raw), "max_abs_error": max(raw),
                               "within_20": sum(e <= 0.2 for e in raw)}
        out["speed_factors"] = [r["speed_factor"] for r in rows if r["ok"] and "speed_factor" in r]
    return out


def _uncalibrated_goal(s: dict) -> str:
    u = s["uncalibrated"]
    met = u["mean_abs_error"] <= 0.10 and u["within_20"] == s["ran"]
    return (" with calibration; on the profile as `bench` measured it, without the speed probe, "
            + ("met as well" if met else f"not met (mean {u['mean_abs_error']:.0%}, {u['within_20']} of {s['ran']} within 20%)"))


def _cmd(args) -> str:
    return ("python benchmarks/compare_suite.py" + (f" --bench {args.bench}" if getattr(args, "bench", 0) else "")
            + (" --calibrate" if getattr(args, "calibrate", False) else "")
            + (f" --repeat {args.repeat}" if args.repeat > 1 else "") + (f" --steps {args.steps}" if args.steps != 20 else ""))


def write_doc(path: str, rows: list, args, profile: dict, profile_path: str, seconds: float,
              date: str | None = None, held_out: list | None = None) -> None:
    import torch

    date = date or time.strftime('%Y-%m-%d %H:%M')
    s = summary(rows)
    goal = (s["mean_abs_error"] is not None and s["mean_abs_error"] <= 0.10 and s["within_20"] == s["ran"]
            and not s["missing"])
    cmd = _cmd(args)
    shown = os.path.relpath(profile_path, ROOT) if profile_path.startswith(ROOT) else profile_path
    if getattr(args, "bench", 0):
        shown = f"measured by `llama-course bench --repeat {args.bench}` at the start of this run"
    cal = "uncalibrated" in s
    u = s.get("uncalibrated", {})
    factors = s.get("speed_factors") or [1.0]
    cal_text = (f"""
**Calibrated** (`--calibrate`): right before and right after each training run, `compare` times the
machine's speed probe (`bench.speed_factor`: the tiny model's forward-backward, the point the profile was
fitted on, one thread per process in as many processes as the layout runs, computing at once) and predicts with the profile's compute scaled by
the probe's mean against the profile (*speed*: above 1, the machine computed slower than when profiled).
One number per run, measured on a run that is not the layout; nothing is fitted to the layout's own
measurement. The speed ranged from {min(factors):.2f} to {max(factors):.2f} over this suite. *uncalibrated
error* is the same prediction on the profile as it is: mean |error| {_pct(u.get('mean_abs_error')).lstrip('+')},
largest {_pct(u.get('max_abs_error')).lstrip('+')}, {u.get('within_20')} of {s['ran']} within 20%.
""" if cal else "")
    text = f"""# Simulator vs runtime: the compare suite

Generated by `{cmd}` on {date} ({os.cpu_count()} cores, {platform.machine()},
torch {torch.__version__}; {seconds / 60:.1f} minutes). Regenerate it with that one command.

Each row trains the `tiny` LLaMA of `configs/tiny.yaml` (seq 128, micro-batch 4, global batch 16, fp32,
{args.steps} steps, the course's own engines) under one layout and predicts it with `llama-course simulate`
on the `cpu` hardware profile ({shown}: {profile.get('note', '')}). *predicted* / *measured* is one
optimizer step (measured: median step of the run's second half{', then the median over ' + str(args.repeat) + ' repeats, taken in rounds over the sitting' if args.repeat > 1 else ''});
error = (predicted - measured) / measured. Components are per step and rank, averaged over the ranks on both
sides (`simulate`'s `mean_breakdown_s`; the runtime's spans, read step by step over the same second half, the
median of each, so that they add up to the median step), p / m = predicted / measured (the optimizer
column is the gradient norm and the optimizer step). *load* is the machine's 1-minute load average while the layout ran.

{table(rows)}
{split_text(rows)}
**Mean |error| {_pct(s['mean_abs_error']).lstrip('+')}, largest {_pct(s['max_abs_error']).lstrip('+')}, {s['within_20']} of {s['ran']} layouts within 20%**{'' if not s['missing'] else ' (missing: ' + ', '.join(s['missing']) + ')'}{' (calibrated)' if cal else ''}.
Goal: mean within 10%, every layout within 20%: {'met' if goal else 'not met'}{_uncalibrated_goal(s) if cal else ''}.
{cal_text}
{load_note(rows)}
{held_out_text(held_out or [])}

{PROFILE_AND_HISTORY}"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({"summary": s, "rows": rows, "held_out": held_out or [],
                   "held_out_summary": held_out_summary(held_out) if held_out else None, "profile": profile, "profile_path": profile_path, "date": date,
                   "repeat": args.repeat, "steps": args.steps, "seconds": seconds,
                   "bench": getattr(args, "bench", 0), "calibrate": getattr(args, "calibrate", False)},
                  f, indent=1, default=str)


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per layout; the median is reported")
    ap.add_argument("--only", action="append", help="run only the layouts with this name (repeatable)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "compare.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table, write no file")
    ap.add_argument("--trace-dir", help="keep both traces of every layout under this folder")
    ap.add_argument("--from-json", metavar="FILE", help="re-render the page from a previous run's compare.json")
    ap.add_argument("--bench", type=int, default=0, metavar="N",
                    help="first measure this machine (`llama-course bench --repeat N`) and predict on that profile: "
                         "calibration and suite in one sitting")
    ap.add_argument("--suite", choices=("tuning", "held-out", "all"), default="all",
                    help="the tuning layouts, the held-out ones (never tuned on), or both (default)")
    ap.add_argument("--calibrate", action="store_true",
                    help="time the machine's speed before and after every run and predict at that speed "
                         "(compare --calibrate); the table keeps the uncalibrated error beside it")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        args.repeat, args.steps = saved.get("repeat", args.repeat), saved.get("steps", args.steps)
        args.bench, args.calibrate = saved.get("bench", 0), saved.get("calibrate", False)
        write_doc(args.out, saved["rows"], args, saved["profile"], saved.get("profile_path", "simulator/profiles/cpu.json"),
                  saved.get("seconds", 0.0), saved.get("date"), saved.get("held_out"))
        print(f"wrote {args.out}")
        return 0
    os.environ.setdefault("LLAMA_COURSE_CACHE", os.path.join(ROOT, ".cache"))

    from simulator.hardware import cpu_profile_path

    t0 = time.perf_counter()
    if args.bench:
        from llama_course.commands.bench import measure
        from simulator.hardware import write_cpu_profile

        path = os.path.join(os.environ["LLAMA_COURSE_CACHE"], "compare_suite_profile.json")
        write_cpu_profile(measure(repeat=args.bench)["profile"], path)
        os.environ["LLAMA_COURSE_CPU_PROFILE"] = path
        print(f"bench: profile written to {path}", file=sys.stderr)
    profile_path = cpu_profile_path()
    with open(profile_path) as f:
        profile = json.load(f)
    tuning = [(n, o, None) for n, o in LAYOUTS] if args.suite in ("tuning", "all") else []
    held = HELD_OUT if args.suite in ("held-out", "all") else []
    chosen = [(k, layout) for k, layout in enumerate(tuning + held) if not args.only or layout[0] in args.only]
    runs = {k: [] for k, _ in chosen}
    # the held-out layouts first: they are read on bench's profile without the speed probe, so they run while
    # that profile is minutes old; then the tuning layouts (read with the probe). Each group in rounds: every
    # layout once, then again, so that a layout's repeats spread over its group's sitting
    groups = [[c for c in chosen if c[0] >= len(tuning)], [c for c in chosen if c[0] < len(tuning)]]
    for group in groups:
        for i in range(args.repeat):
            for k, (name, overrides, steps) in group:
                if runs[k] and not runs[k][-1]["ok"]:
                    continue
                r = run_layout(name, overrides, steps or args.steps, args.trace_dir, args.calibrate)
                runs[k].append(r)
                state = (f"predicted {_ms(r['predicted']['step_time_s'])} ms, measured "
                         f"{_ms(r['measured']['step_time_s'])} ms ({_pct(r['relative_error']['step_time_s'])}), "
                         f"load {r['load']:.1f}") if r["ok"] else r["error"]
                print(f"{name} [{i + 1}/{args.repeat}]: {state}", file=sys.stderr, flush=True)
    rows = [median_of(runs[k]) for k, _ in chosen if k < len(tuning)]
    held_rows = [median_of(runs[k]) for k, _ in chosen if k >= len(tuning)]
    print(table(rows))
    s = summary(rows)
    print(f"mean |error| {_pct(s['mean_abs_error'])}, largest {_pct(s['max_abs_error'])}, "
          f"{s['within_20']}/{s['ran']} within 20%, missing {s['missing']}")
    if "uncalibrated" in s:
        u = s["uncalibrated"]
        print(f"uncalibrated: mean |error| {_pct(u['mean_abs_error'])}, largest {_pct(u['max_abs_error'])}, "
              f"{u['within_20']}/{s['ran']} within 20%")
    if held_rows:
        h = held_out_summary(held_rows)
        print(held_out_text(held_rows))
        print(f"held out (uncalibrated): mean |error| {_pct(h['mean_abs_error'])}, worst {_pct(h['max_abs_error'])}, "
              f"components {h['components_within_25']}/{h['components']} within 25%, goal met: {h['goal_met']}")
    if not args.no_write:
        write_doc(args.out, rows, args, profile, profile_path, time.perf_counter() - t0, held_out=held_rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
