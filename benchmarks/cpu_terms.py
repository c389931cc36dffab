"""Which terms of the CPU model earn their keep: each measured term of the `cpu` profile left out in turn, every
layout of each archived compare suite run re-predicted, and its error against what that run measured.

    python benchmarks/cpu_terms.py                 # writes docs/benchmarks/cpu_terms.md from docs/benchmarks/suite_runs/
    python benchmarks/cpu_terms.py --archive       # first adds the last suite run (docs/benchmarks/compare.json)
    python benchmarks/cpu_terms.py --runs a.json b.json --no-write

No training runs here: the measurements are the ones the compare suite saved
(`python benchmarks/compare_suite.py --bench 3 --calibrate --repeat 3` writes docs/benchmarks/compare.json; `--archive`
keeps what this script needs of it, the measured step times and components and the profile `bench` measured at the
run's start, in docs/benchmarks/suite_runs/). Each run is predicted twice: uncalibrated, as the held-out suite's goal
reads it, and with the speed probed around each layout (the machine's drift removed). A
term earns its keep when leaving it out makes the held-out suite, which the terms were never chosen on, worse in
every run; one that makes it no better in any run, read with and without the speed probes, is dropped (issue 17
item 7); the rest stay, undecided.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.compare_suite import BASE, CONFIG, HELD_OUT, LAYOUTS  # noqa: E402
from simulator.cli_args import Parser  # noqa: E402
from simulator.config import load_config  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

# term: (what it models, the profile values that leave it out)
TERMS = {
    "straggle": ("the slowest of k processes started together runs behind their mean", {"straggle": None}),
    "effective_cores": ("k processes computing at once get effective_cores[k] cores, not min(k, cores)",
                        {"effective_cores": None}),
    "back-to-back all-reduce": ("an all-reduce issued right after another costs its own curve",
                                {"all_reduce_back_to_back_seconds": None}),
    "optimizer fit": ("the optimizer step per tensor and per parameter, fitted, not a memory roofline",
                      {"optimizer_us_per_tensor": 0.0, "optimizer_ns_per_param": None}),
    "kernel overhead": ("a fixed cost per kernel (eager dispatch), fitted", {"kernel_overhead_us": 0.0}),
    "attention kernel": ("fused attention priced as `bench` timed PyTorch's kernel alone, not at a share of the "
                         "matmul peak (left out: the compute fit redone without it, as `bench` keeps it)",
                         lambda prof: prof.get("attention") and {"attention": None, **prof["without_attention"]}),
}
"""term: (what it models, the profile values that leave it out: a dict, or a function of the run's profile giving
one, or nothing when that run's profile predates the term)."""

DROPPED = {
    "p2p in situ": "a pipeline's send after compute as a measured curve (`bench` timed it; now the link's alpha-beta "
                   "the ping-pong measures): worth a point or less in each of the four runs up to 2026-12-06 17:26 "
                   "(this page at commit 20d16a7), so dropped from the profile, `bench` and the simulator",
}
"""Terms the verdict dropped: what they modelled and the evidence (they can no longer be left out)."""


def predict(overrides: list, steps: int) -> float:
    """Step seconds `compare` would predict for a layout on the profile $LLAMA_COURSE_CPU_PROFILE names
    (uncalibrated)."""
    cfg = load_config(CONFIG, BASE + overrides + [f"training.steps={steps}"])
    return simulate(cfg)["step_time_s"]


@contextlib.contextmanager
def profile_env(profile: dict):
    """Context: `profile` is the `cpu` profile the simulator reads (a temporary file, $LLAMA_COURSE_CPU_PROFILE)."""
    old = os.environ.get("LLAMA_COURSE_CPU_PROFILE")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(profile, f)
    os.environ["LLAMA_COURSE_CPU_PROFILE"] = f.name
    try:
        yield f.name
    finally:
        os.unlink(f.name)
        if old is None:
            os.environ.pop("LLAMA_COURSE_CPU_PROFILE", None)
        else:
            os.environ["LLAMA_COURSE_CPU_PROFILE"] = old


def at_speed(profile: dict, factor: float) -> dict:
    """`profile` with its compute `factor` times slower (a speed probe's reading, as `compare --calibrate` uses it)."""
    return dict(profile, speed_factor=float(profile.get("speed_factor", 1.0)) * factor)


def errors(profile: dict, layouts: list, measured: dict, steps: int, speed: dict | None = None) -> list:
    """[relative error] of every layout that ran, in order, predicted on `profile`; with `speed` ({layout: the
    speed probe around it}), each layout's compute scaled by its probe, as `compare --calibrate` predicts."""
    out = []
    for name, overrides, n in layouts:
        if name not in measured:
            continue
        factor = (speed or {}).get(name) or 1.0
        with profile_env(at_speed(profile, factor)):
            out.append(predict(overrides, n or steps) / measured[name] - 1)
    return out


def stats(errs: list) -> tuple:
    a = [abs(e) for e in errs]
    return sum(a) / len(a), max(a)


RUNS_DIR = os.path.join(ROOT, "docs", "benchmarks", "suite_runs")
LAST_RUN = os.path.join(ROOT, "docs", "benchmarks", "compare.json")


def slim(saved: dict) -> dict:
    """What this script needs of a suite run: its date, steps, profile and each layout's measurements."""
    def row(r):
        if not r.get("ok"):
            return {"name": r["name"], "ok": False}
        m = r["measured"]
        return {"name": r["name"], "ok": True, "speed_factor": r.get("speed_factor"),
                "measured": {"step_time_s": m["step_time_s"], "breakdown_s": m.get("breakdown_s", {}),
                             "straggle_wait_s": m.get("straggle_wait_s")}}
    return {"date": saved["date"], "steps": saved["steps"], "profile": saved["profile"],
            "rows": [row(r) for r in saved["rows"]], "held_out": [row(r) for r in saved.get("held_out", [])]}


def archive(saved: dict, directory: str = RUNS_DIR) -> str:
    """Write slim(saved) to directory/compare-<date>.json (the same run twice: the same file); its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "compare-" + saved["date"].replace(" ", "-").replace(":", "") + ".json")
    with open(path, "w") as f:
        json.dump(slim(saved), f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def ablation(saved: dict, calibrated: bool = False) -> dict:
    """{"nothing": (tuning mean, worst, held-out mean, worst), term: (the same without it)} of one run;
    `calibrated`: each layout predicted at the speed probed around it (None when the run has no probes)."""
    done = [r for r in saved["rows"] + saved.get("held_out", []) if r["ok"]]
    measured = {r["name"]: r["measured"]["step_time_s"] for r in done}
    speed = {r["name"]: r.get("speed_factor") for r in done} if calibrated else None
    if calibrated and not all(speed.values()):
        return None
    tuning = [(n, o, None) for n, o in LAYOUTS]
    steps, profile = saved["steps"], saved["profile"]

    def both(prof):
        return stats(errors(prof, tuning, measured, steps, speed)) + stats(errors(prof, HELD_OUT, measured, steps, speed))
    out = {"nothing": both(profile)}
    for term, (_, without) in TERMS.items():
        without = without(profile) if callable(without) else without
        if not without:
            out[term] = None                          # measured before this term existed
            continue
        print(f"cpu_terms: {saved['date']}{' calibrated' if calibrated else ''}: without {term}", file=sys.stderr,
              flush=True)
        out[term] = both(dict(profile, **without))
    return out


def verdict(changes: list) -> str:
    """A term's verdict from its held-out change (points of mean error, left out minus kept) in each run that
    has it (None: the run predates the term)."""
    changes = [c for c in changes if c is not None]
    if not changes:
        return "not measured yet"
    if all(c > 1.0 for c in changes):
        return "earns its keep"
    if all(c <= 1.0 for c in changes):
        return "drop candidate"
    return "undecided"


def term_table(dates: list, results: list) -> str:
    """One row per term: its held-out change in each run and the verdict over them."""
    lines = ["| left out | what it models | " + " | ".join(dates) + " | verdict |",
             "|---|---|" + "---:|" * len(dates) + "---|",
             "| nothing (the model as shipped): held-out mean / worst | | "
             + " | ".join(f"{100 * r['nothing'][2]:.0f}% / {100 * r['nothing'][3]:.0f}%" for r in results) + " | |"]
    for term, (what, _) in TERMS.items():
        changes = [None if r[term] is None else 100 * (r[term][2] - r["nothing"][2]) for r in results]
        lines.append(f"| {term} | {what} | " + " | ".join("n/a" if c is None else f"{c:+.1f} pt" for c in changes)
                     + f" | {verdict(changes)} |")
    return "\n".join(lines)


def page(runs: list, plain: list, calibrated: list) -> str:
    dates = [r["date"] for r in runs]
    probed = [(d, r) for d, r in zip(dates, calibrated) if r is not None]
    speeds = []
    for run in runs:
        f = [r["speed_factor"] for r in run.get("held_out", []) if r.get("ok") and r.get("speed_factor")]
        speeds.append(f"{sum(f) / len(f):.2f}" if f else "-")
    shipped = ["| run | tuning mean / worst | held-out mean / worst | held-out, with the speed probe | speed probe "
               "around the held-out layouts (mean) |", "|---|---:|---:|---:|---:|"]
    for d, p, c, sp in zip(dates, plain, calibrated, speeds):
        cal = f"{100 * c['nothing'][2]:.0f}% / {100 * c['nothing'][3]:.0f}%" if c else "-"
        shipped.append(f"| {d} | {100 * p['nothing'][0]:.0f}% / {100 * p['nothing'][1]:.0f}% | "
                       f"{100 * p['nothing'][2]:.0f}% / {100 * p['nothing'][3]:.0f}% | {cal} | {sp} |")
    calibrated_part = (f"""
With the speed probe: the same, each layout predicted at the speed `compare --calibrate` probed right before
and after it ran (the machine's drift since `bench` removed; what the term itself is worth):

{term_table([d for d, _ in probed], [r for _, r in probed])}
""" if probed else "")
    return f"""# Which CPU-model terms earn their keep

Generated by `python benchmarks/cpu_terms.py` from {len(runs)} compare suite run{'s' if len(runs) > 1 else ''}
kept in `docs/benchmarks/suite_runs/` (each run's measured step times, the speed probes around each layout and
the profile `bench` measured at its start; `python benchmarks/cpu_terms.py --archive` adds the last one).
Each row leaves one measured term of the `cpu` profile out and re-predicts every layout of every run with the
code as it is now; a column is one run, its cell the change of the held-out suite's mean error when the term
is left out (positive: the term made the prediction better). The held-out layouts were never used to choose
any term. A term **earns its keep** when it is worth more than one point in every run, is a **drop candidate**
when it is worth a point or less in every run, and is otherwise **undecided** (kept); it is dropped when it is a
drop candidate in both readings below; *n/a*: the run's `bench` predates the term, and the verdict reads the runs
that have it. The two
fitted compute terms (kernel overhead, optimizer fit) are left out without refitting the terms fitted with
them, so their rows say little; the measured ones stand alone. The runtime's code on these layouts' paths did
not change between the runs; the machine's speed did.

Uncalibrated (the held-out goal's reading: the profile as `bench` measured it at the run's start):

{term_table(dates, plain)}
{calibrated_part}
Dropped: {"; ".join(f"**{t}**, {why}" for t, why in DROPPED.items())}.

The model as shipped on each run (a speed probe above 1: the machine computed slower than when profiled):

{chr(10).join(shipped)}
"""


def load_runs(paths: list) -> list:
    """The kept suite runs at `paths`, oldest first (OSError / ValueError for a missing or broken file)."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    return sorted(runs, key=lambda r: r["date"])


def write_page(text: str, args) -> None:
    """Print a generated page and, unless --no-write, write it to --out."""
    print(text)
    if not args.no_write:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", help="saved suite runs (default: every file in docs/benchmarks/suite_runs/)")
    ap.add_argument("--archive", action="store_true", help="first keep docs/benchmarks/compare.json in docs/benchmarks/suite_runs/")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "cpu_terms.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    paths = args.runs
    try:
        if args.archive:
            with open(LAST_RUN) as f:
                print(f"cpu_terms: kept {archive(json.load(f))}", file=sys.stderr)
        if not paths:
            paths = sorted(glob.glob(os.path.join(RUNS_DIR, "*.json"))) or [LAST_RUN]
        runs = load_runs(paths)
    except (OSError, ValueError) as e:
        print(f"cpu_terms: cannot read {getattr(e, 'filename', None) or 'a run'}: {e}", file=sys.stderr)
        return 2
    write_page(page(runs, [ablation(r) for r in runs], [ablation(r, calibrated=True) for r in runs]), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
