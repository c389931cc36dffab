"""The graded tests discriminate: each plausible wrong answer in tests/exercises/wrong_answers/ loses points.

Each module there replaces some of its concept's reference functions with a wrong answer that gets the
numbers right (or nearly) and the systems part wrong, and names the graded tests that must fail on it
(`WRONG`, see tests/exercises/wrong_answers/__init__.py). This test grades the module in place of the
concept's (LLAMA_COURSE_EXERCISE_MODULES) in a subprocess, running only the graded tests it names, and
checks that every one of them failed for the stated reason: a wrong answer that still earns the points
means a graded test checks too little.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRONG_DIR = ROOT / "tests" / "exercises" / "wrong_answers"
MODULES = sorted(p for p in WRONG_DIR.glob("*.py") if p.name != "__init__.py") if WRONG_DIR.is_dir() else []


def declared(path: Path) -> tuple:
    """(CONCEPT, WRONG) of a wrong-answer module, read without importing it."""
    values = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("CONCEPT", "WRONG"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["CONCEPT"], values["WRONG"]


def grade_module(path: Path, tmp_path: Path) -> tuple:
    """Run the graded tests the module names on it; (wrong list, {test name: [(outcome, message)]})."""
    concept, wrong = declared(path)
    report = tmp_path / "report.json"
    # only the graded tests it names (each with all its parameters): the others are not asserted on
    named = sorted({test for w in wrong for test in w["fails"]})
    cmd = [sys.executable, "-m", "pytest", *[f"tests/exercises/test_{concept}.py::{test}" for test in named],
           "--impl", "solutions", "-q", "-p", "no:cacheprovider", "--tb=line", "--grade-report", str(report)]
    env = {**os.environ, "LLAMA_COURSE_EXERCISE_MODULES": f"{concept}=wrong_answers.{path.stem}",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes: dict = {}
    for t in json.loads(report.read_text())["tests"]:
        name = t["nodeid"].split("::")[-1].split("[")[0]
        outcomes.setdefault(name, []).append((t["outcome"], t["message"]))
    return wrong, outcomes


@pytest.fixture(scope="module")
def graded(request, tmp_path_factory):
    """{module path: future of grade_module}: the selected wrong answers graded two at a time (each grading is
    mostly one process starting pytest and importing torch, so two share the 2-core CI machine without waiting
    on each other), started when the first test asks."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_wrong_answer_loses_points"]
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {path: pool.submit(grade_module, path, tmp_path_factory.mktemp(path.stem)) for path in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_there_are_wrong_answers():
    assert len(MODULES) >= 10


@pytest.mark.skipif(not (ROOT / "solutions").is_dir(), reason="instructor check: needs solutions/")
@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_wrong_answer_loses_points(path, graded):
    wrong, outcomes = graded[path].result()
    for w in wrong:
        for test in w["fails"]:
            assert test in outcomes, f"{path.stem}: no graded test named {test} ran (exercise {w['exercise']})"
            for outcome, message in outcomes[test]:
                assert outcome != "passed", f"{path.stem} ({w['why']}) still passes {test}"
                assert w["message"] in message, f"{path.stem}: {test} failed for another reason: {message}"
