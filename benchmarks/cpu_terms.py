"""Which terms of the CPU model earn their keep: each measured term of the `cpu` profile left out in turn, every
layout of the last compare suite run re-predicted, and its error against what that run measured.

    python benchmarks/cpu_terms.py                 # writes docs/benchmarks/cpu_terms.md
    python benchmarks/cpu_terms.py --no-write

No training runs here: the measurements are the ones docs/benchmarks/compare.json holds (the compare suite,
`python benchmarks/compare_suite.py --bench 3 --calibrate --repeat 3`), and the profile is the one that run
measured (saved in the same file). Predictions are uncalibrated, as the held-out suite's goal reads them. A
term earns its keep when leaving it out makes the held-out suite, which the terms were never chosen on,
worse; one that does not is a candidate to drop (issue 17 item 7).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.compare_suite import BASE, CONFIG, HELD_OUT, LAYOUTS  # noqa: E402
from simulator.config import load_config  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

# term: (what it models, the profile values that leave it out)
TERMS = {
    "straggle": ("the slowest of k processes started together runs behind their mean", {"straggle": None}),
    "effective_cores": ("k processes computing at once get effective_cores[k] cores, not min(k, cores)",
                        {"effective_cores": None}),
    "back-to-back all-reduce": ("an all-reduce issued right after another costs its own curve",
                                {"all_reduce_back_to_back_seconds": None}),
    "p2p in situ": ("a pipeline send after compute is a measured curve, not the link's alpha-beta",
                    {"p2p_in_situ_seconds": None}),
    "optimizer fit": ("the optimizer step per tensor and per parameter, fitted, not a memory roofline",
                      {"optimizer_us_per_tensor": 0.0, "optimizer_ns_per_param": None}),
    "kernel overhead": ("a fixed cost per kernel (eager dispatch), fitted", {"kernel_overhead_us": 0.0}),
}


def predict(overrides: list, steps: int) -> float:
    """Step seconds `compare` would predict for a layout on the profile $LLAMA_COURSE_CPU_PROFILE names
    (uncalibrated)."""
    cfg = load_config(CONFIG, BASE + overrides + [f"training.steps={steps}"])
    return simulate(cfg)["step_time_s"]


def errors(profile: dict, layouts: list, measured: dict, steps: int) -> list:
    """[relative error] of every layout that ran, in order, predicted on `profile` (written once to a file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(profile, f)
    old = os.environ.get("LLAMA_COURSE_CPU_PROFILE")
    os.environ["LLAMA_COURSE_CPU_PROFILE"] = f.name
    try:
        return [predict(overrides, n or steps) / measured[name] - 1
                for name, overrides, n in layouts if name in measured]
    finally:
        os.unlink(f.name)
        if old is None:
            os.environ.pop("LLAMA_COURSE_CPU_PROFILE", None)
        else:
            os.environ["LLAMA_COURSE_CPU_PROFILE"] = old


def stats(errs: list) -> tuple:
    a = [abs(e) for e in errs]
    return sum(a) / len(a), max(a)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=os.path.join(ROOT, "docs", "benchmarks", "compare.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "cpu_terms.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    try:
        with open(args.runs) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        print(f"cpu_terms: cannot read {args.runs}: {e}", file=sys.stderr)
        return 2
    measured = {r["name"]: r["measured"]["step_time_s"] for r in saved["rows"] + saved.get("held_out", []) if r["ok"]}
    tuning = [(n, o, None) for n, o in LAYOUTS]
    steps, profile = saved["steps"], saved["profile"]
    base_t, base_h = errors(profile, tuning, measured, steps), errors(profile, HELD_OUT, measured, steps)
    lines = ["| left out | what it models | tuning mean / worst | held-out mean / worst | held-out change | verdict |",
             "|---|---|---:|---:|---:|---|"]
    (tm, tw), (hm, hw) = stats(base_t), stats(base_h)
    lines.append(f"| nothing (the model as shipped) | | {100 * tm:.0f}% / {100 * tw:.0f}% | {100 * hm:.0f}% / "
                 f"{100 * hw:.0f}% | | |")
    for term, (what, without) in TERMS.items():
        print(f"cpu_terms: without {term}", file=sys.stderr, flush=True)
        prof = dict(profile, **without)
        (m1, w1), (m2, w2) = stats(errors(prof, tuning, measured, steps)), stats(errors(prof, HELD_OUT, measured, steps))
        change = m2 - hm
        verdict = "earns its keep" if change > 0.01 else ("no effect here" if abs(change) <= 0.01 else "drop candidate")
        lines.append(f"| {term} | {what} | {100 * m1:.0f}% / {100 * w1:.0f}% | {100 * m2:.0f}% / {100 * w2:.0f}% | "
                     f"{100 * change:+.1f} pt | {verdict} |")
    table = "\n".join(lines)
    text = f"""# Which CPU-model terms earn their keep

Generated by `python benchmarks/cpu_terms.py` from the compare suite run of {saved['date']}
(`docs/benchmarks/compare.json`: its measurements and the profile `bench` measured at its start). Each row
leaves one measured term of the `cpu` profile out and re-predicts every layout of that run with the code as
it is now, uncalibrated; errors are against the step times that run measured. The held-out layouts were
never used to choose any term: a term that does not make them better by more than one point of mean error
does not earn its keep on this evidence ("no effect here": within a point either way; "drop candidate":
better without it). The two fitted compute terms (kernel overhead, optimizer fit) are left out without
refitting the terms fitted with them, so their rows say little; the measured ones stand alone.

{table}
"""
    print(text)
    if not args.no_write:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
