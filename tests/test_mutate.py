"""The mutation runner (scripts/mutate.py): what it mutates, what it leaves alone, which tests a mutant runs."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mutate.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists() or not (ROOT / "solutions").is_dir(),
                                reason="instructor tool: not in the student handout")


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("_mutate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_mutate"] = module                   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SOURCE = '''
"""Module docstring 1 < 2."""

LIMIT = 3


def f(x, y=2):
    """Exercise 9.9: f."""
    if x < LIMIT and not y:
        raise ValueError(f"x {x + 1} too big")
    return max(x, y) - _helper(x, y)


def _helper(a, b):
    return a * b
'''


def test_sites_skip_docstrings_fstrings_and_defaults(mutate):
    found = [(kind, description) for _, kind, description, _ in mutate.sites(ast.parse(SOURCE))]
    descriptions = [d for _, d in found]
    assert ("compare", "< -> <=") in found and ("bool", "and -> or") in found and ("bool", "drop `not`") in found
    assert ("arith", "- -> +") in found and ("arith", "* -> /") in found
    assert ("constant", "3 -> 4") in found and ("constant", "3 -> 2") in found          # LIMIT = 3
    assert not any("2 -> " in d for d in descriptions), "the default y=2 is the API, not logic"
    assert not any(d == "+ -> -" for d in descriptions), "x + 1 inside the f-string is an error message"
    assert "swap the first two arguments of max(...)" not in descriptions, "max commutes: no mutant"
    assert "swap the first two arguments of _helper(...)" in descriptions
    assert any(d.startswith("drop `return max") for d in descriptions)
    assert not any("Module docstring" in d or "Exercise 9.9" in d for d in descriptions)


def test_every_mutant_of_every_solution_is_valid_python_and_differs(mutate):
    total = 0
    for path in sorted((ROOT / "solutions").glob("*.py")):
        if path.stem == "__init__":
            continue
        source = path.read_text()
        clean = ast.dump(ast.parse(source))
        for index in range(0, len(mutate.sites(ast.parse(source))), 10):     # every 10th: unparsing is slow
            mutated = mutate.mutated_source(source, index)
            assert ast.dump(ast.parse(mutated)) != clean, f"{path.name} site {index} changes nothing"
            total += 1
    assert total > 100


def test_drop_not_removes_the_negation(mutate):
    source = "def g(a):\n    return not a\n"
    index = [d for _, _, d, _ in mutate.sites(ast.parse(source))].index("drop `not`")
    assert mutate.mutated_source(source, index).strip().endswith("return a")


def test_a_helper_runs_the_exercises_of_its_callers(mutate):
    tree = ast.parse((ROOT / "solutions" / "collectives.py").read_text())
    of = mutate.exercises_of("collectives", tree)
    assert of["ring_all_reduce"] == ("2.5",)
    assert of["_chunk_bounds"] == ("2.5",)            # private: used by ring_all_reduce only
    assert "2.2" in of["RING_STEPS"]                  # a constant: every exercise that reads it


def _report_module():
    spec = importlib.util.spec_from_file_location("_mutation_report", ROOT / "scripts" / "mutation_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutation_report_writes_the_run_into_the_page(tmp_path):
    report = _report_module()
    mutant = {"concept": "collectives", "line": 12, "kind": "compare", "description": "< -> <=",
              "owner": "ring", "exercises": ["2.5"]}
    run = {"command": "python scripts/mutate.py --sample 3 --seed 4 --json r.json", "date": "2026-01-02",
           "score": 2 / 3, "killed": 2, "run": 3, "sites": 50, "seconds": 120.0, "seed": 4, "sample": 3,
           "mutants": [{**mutant, "status": "killed"}, {**mutant, "status": "killed (timeout)", "concept": "sync_async"},
                       {**mutant, "status": "survived"}]}
    path = tmp_path / "r.json"
    path.write_text("{}")
    page = f"# Guide\n\nbefore\n\n{report.BEGIN}\nold numbers\n{report.END}\n\nafter\n"
    out = report.replace_block(page, report.render(run, path))
    assert "old numbers" not in out and out.startswith("# Guide\n\nbefore") and out.endswith("after\n")
    assert "`python scripts/mutate.py --sample 3 --seed 4 --json r.json`" in out and "2026-01-02" in out
    assert "**2 of 3 killed (66.7%)**" in out and "a seeded sample of 3 of the 50 mutants" in out
    assert "| collectives | 1 | 2 |" in out and "| sync_async | 1 | 1 |" in out
    assert "- `solutions/collectives.py:12` [compare] < -> <= (`ring`, exercise 2.5)" in out
    with pytest.raises(ValueError):
        report.replace_block("# no block\n", "x")


def test_instructor_guide_carries_a_generated_mutation_block():
    report = _report_module()
    page = (ROOT / "docs" / "instructor.md").read_text()
    block = page[page.index(report.BEGIN):page.index(report.END)]
    assert "python scripts/mutate.py" in block and "killed (" in block and "generated" in block
