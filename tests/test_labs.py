"""Labs: every lab executes top to bottom and its prose agrees with its own outputs.

A lab's claims about its runs are rendered from computed values (a code cell ending in
`Markdown(f"...")`) and guarded by `assert`s on the values the prose states, so a lab whose text and output
disagree fails here. The prose between runs may not type a result (a percentage, a decimal, "~N", "Nx"): that
is checked without executing anything. Each lab opens with predict-first questions and ends with questions
whose answers its own runs print.

Execution goes through scripts/execute_labs.py: each lab runs with nbclient in labs/, and its executed copy
(outputs and figures, for the docs site) lands in build/labs/. A copy made from the same notebook and the same
code (llama_course/, simulator/, solutions/, benchmarks/, configs/) is reused, so CI executes each lab once
for this test and the site build together; set LLAMA_COURSE_LABS_FORCE=1 to execute again regardless.

    pytest tests/test_labs.py                    # all labs
    pytest tests/test_labs.py -k 02_collectives  # one
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
NOTEBOOKS = sorted(LABS.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 600

# typed results: a percentage, "~N" / "about N", a multiplier "Nx", "N times" (anywhere, code spans included);
# a decimal outside code spans and math. Exercise numbers ("exercise 9.1", "**4.2**", "3.1 `name`") are labels.
ANYWHERE = re.compile(r"\d+(?:\.\d+)?\s*%|[~≈]\s*\d+|\babout \d+|\b\d+(?:\.\d+)?x\b|\d+\s+times\b")
LABEL = re.compile(r"(?:[Ee]xercises? |\*\*)\d+\.\d+|\b\d+\.\d+(?=\*\*| `)")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
CODE_OR_MATH = re.compile(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", re.S)


def _execute_labs():
    spec = importlib.util.spec_from_file_location("_execute_labs", ROOT / "scripts" / "execute_labs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(notebook: Path) -> list:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def typed_results(markdown: str) -> list:
    """Result-like numbers typed into prose (see ANYWHERE and DECIMAL)."""
    found = [m.group(0) for m in ANYWHERE.finditer(markdown)]
    prose = CODE_OR_MATH.sub(" ", LABEL.sub(" ", markdown))
    return found + [m.group(0) for m in DECIMAL.finditer(prose)]


def test_typed_results_are_found():
    assert typed_results("dynamic_batch at `4/(3 + 1/3) / 4 = 90%`") == ["90%"]
    assert typed_results("the simulator's factor 0.02, ~400 failures, a 3.8x saving") == ["~400", "3.8x", "0.02"]
    assert typed_results("exercise 9.1, **4.2** `f`, 2.1 `ring`, `outer_lr=0.7`, $\\eta = 0.7$") == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_lab_prose_after_the_first_run_types_no_result(notebook):
    """Markdown cells after the first code cell state no result by hand: results are rendered by cells."""
    seen_code, typed = False, []
    for i, cell in enumerate(_cells(notebook)):
        if cell["cell_type"] == "code":
            seen_code = True
        elif seen_code:
            typed += [(i, t) for t in typed_results(_source(cell))]
    assert not typed, f"{notebook.name}: render these from the cells' values (cell, text): {typed}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_lab_opens_with_predictions_and_ends_with_questions_its_runs_answer(notebook):
    cells = _cells(notebook)
    assert any(c["cell_type"] == "markdown" and "## Predict first" in _source(c) for c in cells[:3]), \
        f"{notebook.name}: the second cell asks the reader to predict"
    questions = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Questions" in _source(c)]
    assert questions, f"{notebook.name}: no '## Questions' cell"
    answers = [c for c in cells[questions[-1] + 1:] if c["cell_type"] == "code"]
    assert answers and "Answers from this run" in _source(answers[0]) and "Markdown(" in _source(answers[0])
    assert any("assert " in _source(c) for c in cells if c["cell_type"] == "code"), \
        f"{notebook.name}: no check cell asserts what the prose states"


def test_a_failing_check_cell_fails_the_lab(tmp_path):
    """The mechanism every lab relies on: an `assert` in a cell fails the execution, which names the cell."""
    pytest.importorskip("nbclient")
    ex = _execute_labs()
    nb = {"cells": [{"id": "c1", "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": ["speedup = 1.2\n", "assert speedup > 1.5, 'the prose says 1.5x'"]}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    lab = tmp_path / "99_check.ipynb"
    lab.write_text(json.dumps(nb))
    logged = []
    assert ex.run([lab], out=tmp_path / "out", timeout_s=60, log=logged.append) == ["99_check.ipynb"]
    assert "AssertionError: the prose says 1.5x" in logged[-1] and "speedup = 1.2" in logged[-1]
    assert not (tmp_path / "out" / lab.name).exists()


def test_an_executed_copy_is_fresh_only_for_its_notebook_and_code(tmp_path):
    ex = _execute_labs()
    lab, out = tmp_path / "01_x.ipynb", tmp_path / "out"
    lab.write_text("{}")
    out.mkdir()
    (out / lab.name).write_text(json.dumps({"metadata": {"llama_course": {"input_sha256": ex.input_hash(lab, "a")}}}))
    assert ex.is_fresh(lab, out, "a")
    assert not ex.is_fresh(lab, out, "b")                 # the code changed
    lab.write_text("{} ")
    assert not ex.is_fresh(lab, out, "a")                 # the notebook changed


@pytest.mark.slow
@pytest.mark.timeout(30 * TIMEOUT_S)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_lab_executes_and_its_checks_pass(notebook):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    stored = nbformat.read(notebook, as_version=4)
    assert not any(c.get("outputs") for c in stored.cells if c.cell_type == "code"), \
        f"{notebook.name} is stored with outputs; clear them (execute_labs.py keeps executed copies in build/)"
    ex = _execute_labs()
    logged = []
    failed = ex.run([notebook], force=bool(os.environ.get("LLAMA_COURSE_LABS_FORCE")), timeout_s=TIMEOUT_S,
                    log=logged.append)
    assert not failed, logged[-1]
    executed = nbformat.read(ex.OUT / notebook.name, as_version=4)
    claims = [c for c in executed.cells if c.cell_type == "code" and "Markdown(" in c.source]
    for cell in claims:            # every claim cell rendered its prose
        assert any("text/markdown" in o.get("data", {}) for o in cell.outputs), cell.source[:80]
