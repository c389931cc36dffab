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
