"""Grade the exercises: run the graded tests, print a score table per concept and exercise, write JSON.

    llama-course grade                         # your stubs in labs/exercises/ (impl labs)
    llama-course grade --only collectives      # one concept
    llama-course grade --impl solutions --json # the reference; print the JSON report
    llama-course grade --out report.json       # where the report goes (default grade_report.json)

It runs `pytest tests/exercises --impl IMPL --grade-report FILE` in a subprocess from the course's root
folder (the nearest folder above the current one that has tests/exercises, else the installed checkout);
tests/exercises/conftest.py records each test's points (`@pytest.mark.points(n, exercise="2.1")`) and
outcome. A test earns its points only if it passes. The exit code is 0 when every graded test passed,
1 when some failed, 2 when grading itself could not run (no tests found, a usage error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llama_course.commands.quiz import CONCEPTS
from simulator.config_checks import check_writable


def find_root(start: Path | None = None) -> Path | None:
    """The course root: the nearest folder at or above `start` (cwd) with tests/exercises, else the checkout."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "tests" / "exercises").is_dir():
            return folder
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "tests" / "exercises").is_dir() else None


def run_graded_tests(impl: str = "labs", only: str | None = None, root: Path | None = None,
                     extra_args: tuple = ()) -> dict:
    """Run the graded tests in a subprocess; returns the raw report: impl, pytest_exit_code, tests, output."""
    root = root or find_root()
    if root is None:
        raise FileNotFoundError("no tests/exercises folder here or above: run grade from the course folder")
    target = "tests/exercises" if only is None else f"tests/exercises/test_{only}.py"
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", target, "--impl", impl, "--grade-report", str(report_path),
               "-q", "-p", "no:cacheprovider", "--tb=line", "-rN", *extra_args]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        report = json.loads(report_path.read_text()) if report_path.exists() else \
            dict(impl=impl, pytest_exit_code=proc.returncode, tests=[])
    report["pytest_exit_code"] = proc.returncode
    report["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
    return report


def summarize(raw: dict) -> dict:
    """The JSON report: totals, per concept, per exercise, per test."""
    concepts: dict = {}
    for t in raw["tests"]:
        c = concepts.setdefault(t["concept"], dict(earned=0, possible=0, passed=0, tests=0, exercises={}))
        e = c["exercises"].setdefault(t["exercise"] or "-", dict(earned=0, possible=0, passed=0, tests=0))
        for bucket in (c, e):
            bucket["earned"] += t["earned"]
            bucket["possible"] += t["points"]
            bucket["passed"] += t["outcome"] == "passed"
            bucket["tests"] += 1
    order = {name: i for i, name in enumerate(CONCEPTS)}
    concepts = dict(sorted(concepts.items(), key=lambda kv: order.get(kv[0], len(order))))
    for c in concepts.values():
        c["exercises"] = dict(sorted(c["exercises"].items(), key=lambda kv: _exercise_key(kv[0])))
    return dict(
        impl=raw["impl"],
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        user=os.environ.get("USER") or os.environ.get("USERNAME"),
        earned=sum(c["earned"] for c in concepts.values()),
        possible=sum(c["possible"] for c in concepts.values()),
        pytest_exit_code=raw["pytest_exit_code"],
        concepts=concepts,
        tests=raw["tests"],
    )


def _exercise_key(name: str) -> tuple:
    try:
        return tuple(int(p) for p in name.split("."))
    except ValueError:
        return (10**6, name)


def format_table(report: dict) -> str:
    """The score table a student reads: one line per exercise, a subtotal per concept, the total."""
    lines = [f"{'concept':<26} {'exercise':>8} {'tests':>9} {'points':>11}", "-" * 57]
    for name, c in report["concepts"].items():
        for ex, e in c["exercises"].items():
            lines.append(f"{name:<26} {ex:>8} {e['passed']:>4}/{e['tests']:<4} {e['earned']:>5g}/{e['possible']:<5g}")
        lines.append(f"{'':<26} {'total':>8} {c['passed']:>4}/{c['tests']:<4} {c['earned']:>5g}/{c['possible']:<5g}")
    lines.append("-" * 57)
    pct = 100 * report["earned"] / report["possible"] if report["possible"] else 0.0
    lines.append(f"{'all (' + report['impl'] + ')':<26} {'':>8} {'':>9} {report['earned']:>5g}/{report['possible']:<5g}"
                 f" {pct:.0f}%")
    failing: dict = {}
    for t in report["tests"]:
        if t["outcome"] != "passed":
            failing.setdefault((t["concept"], t["exercise"] or "-"), []).append(t)
    if failing:
        lines += ["", "not yet passing (first failure of each exercise):"]
        for (concept, ex), tests in failing.items():
            first = tests[0]
            lines.append(f"  {concept} {ex}: {len(tests)} test(s), e.g. {first['nodeid'].split('::')[-1]}"
                         f" [{first['outcome']}] {first['message']}")
    return "\n".join(lines)


def cli(args) -> int:
    """`llama-course grade [--impl labs|solutions] [--json] [--out FILE] [--only CONCEPT]`."""
    impl = getattr(args, "impl", "labs") or "labs"
    only = getattr(args, "only", None)
    out = getattr(args, "out", None) or "grade_report.json"
    root = find_root()
    if root is None:
        print("error: no tests/exercises folder here or above; run `llama-course grade` in the course folder",
              file=sys.stderr)
        return 2
    if only is not None:
        if only not in CONCEPTS:
            print(f"error: --only: unknown concept {only!r}; one of: {', '.join(CONCEPTS)}", file=sys.stderr)
            return 2
        if not (root / "tests" / "exercises" / f"test_{only}.py").exists():
            print(f"error: --only: concept {only!r} has no graded exercises yet", file=sys.stderr)
            return 2
    check_writable("--out", out)                # ConfigError: one line, exit 2 (commands/cli.main)
    if impl == "solutions" and not (root / "solutions").is_dir():
        print("error: solutions/ is not in this copy of the course; grade your own work with --impl labs",
              file=sys.stderr)
        return 2
    raw = run_graded_tests(impl, only, root)
    if not raw["tests"]:
        print("error: no graded tests ran; pytest said:\n" + raw.get("output_tail", ""), file=sys.stderr)
        return 2
    report = summarize(raw)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_table(report))
        print(f"\nreport written to {out}")
    return 0 if report["earned"] == report["possible"] else 1
