"""The grading framework: llama_course/commands/grade.py, tests/conftest.py's opt-in, the exercise modules, the handout."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from llama_course.commands import grade
from llama_course.commands.quiz import CONCEPTS

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTOR = pytest.mark.skipif(not (ROOT / "scripts" / "make_handout.py").exists(),
                                reason="instructor check: the handout has no make_handout.py")
STUBS = sorted(p for p in (ROOT / "labs" / "exercises").glob("*.py") if p.name != "__init__.py")


def _functions(path: Path) -> dict:
    """Public top-level functions of a module: name -> argument names."""
    tree = ast.parse(path.read_text())
    return {n.name: [a.arg for a in n.args.args] for n in tree.body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def test_there_are_exercises():
    assert STUBS, "no labs/exercises/<concept>.py yet"


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.stem)
def test_stub_solution_and_tests_line_up(stub):
    """Concept symmetry: labs/exercises/X.py, solutions/X.py and tests/exercises/test_X.py, same functions."""
    concept = stub.stem
    assert concept in CONCEPTS
    if not (ROOT / "solutions").is_dir():
        pytest.skip("no solutions/ in a student handout")
    solution = ROOT / "solutions" / f"{concept}.py"
    assert solution.exists() and (ROOT / "tests" / "exercises" / f"test_{concept}.py").exists()
    stub_funcs, solution_funcs = _functions(stub), _functions(solution)
    assert stub_funcs and set(stub_funcs) <= set(solution_funcs)
    for name, params in stub_funcs.items():
        assert solution_funcs[name] == params, f"{concept}.{name}: signatures differ"


def _classes(path: Path) -> dict:
    """Public top-level classes of a module: name -> the argument names of __init__ (self left out)."""
    tree = ast.parse(path.read_text())
    out = {}
    for n in tree.body:
        if isinstance(n, ast.ClassDef) and not n.name.startswith("_"):
            init = [f for f in n.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
            out[n.name] = [a.arg for a in init[0].args.args[1:]] if init else []
    return out


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.stem)
def test_stubs_raise_not_implemented_naming_the_exercise(stub):
    spec = importlib.util.spec_from_file_location(f"_stub_{stub.stem}", stub)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, params in {**_functions(stub), **_classes(stub)}.items():
        with pytest.raises(NotImplementedError, match=r"Exercise \d+\.\d+"):
            getattr(module, name)(*[None] * len(params))


@pytest.mark.parametrize("stub", STUBS, ids=lambda p: p.stem)
def test_stub_and_solution_classes_line_up(stub):
    solution = ROOT / "solutions" / stub.name
    if not solution.exists():
        pytest.skip("no solutions/ in a student handout")
    classes, solved = _classes(stub), _classes(solution)
    for name, params in classes.items():
        assert solved.get(name) == params, f"{stub.stem}.{name}: __init__ signatures differ"


def _run_grade(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "llama_course", "grade", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def test_grade_solutions_earns_every_point(tmp_path):
    out = tmp_path / "report.json"
    proc = _run_grade("--impl", "solutions", "--only", "collectives", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["impl"] == "solutions" and report["possible"] > 0
    assert report["earned"] == report["possible"]
    col = report["concepts"]["collectives"]
    assert set(col["exercises"]) >= {"2.1", "2.2", "2.3"}
    assert all(t["outcome"] == "passed" and t["earned"] == t["points"] for t in report["tests"])
    assert "collectives" in proc.stdout and "100%" in proc.stdout


def test_grade_stubs_earns_nothing_and_says_why(tmp_path):
    out = tmp_path / "report.json"
    proc = _run_grade("--only", "collectives", "--out", str(out), "--json")
    assert proc.returncode == 1
    printed = json.loads(proc.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["earned"] == 0 and printed["possible"] > 0
    assert all("NotImplementedError" in t["message"] for t in printed["tests"])


def test_grade_rejects_unknown_concept():
    proc = _run_grade("--only", "telepathy")
    assert proc.returncode == 2 and "unknown concept" in proc.stderr and "Traceback" not in proc.stderr


def test_summary_and_table():
    raw = dict(impl="labs", pytest_exit_code=1, tests=[
        dict(nodeid="tests/exercises/test_collectives.py::a", concept="collectives", exercise="2.10", points=2,
             outcome="passed", earned=2, message=""),
        dict(nodeid="tests/exercises/test_collectives.py::b", concept="collectives", exercise="2.2", points=3,
             outcome="failed", earned=0, message="NotImplementedError: Exercise 2.2"),
        dict(nodeid="tests/exercises/test_llama_basics.py::c", concept="llama_basics", exercise="1.1", points=1,
             outcome="passed", earned=1, message=""),
    ])
    report = grade.summarize(raw)
    assert (report["earned"], report["possible"]) == (3, 6)
    assert list(report["concepts"]) == ["llama_basics", "collectives"]            # concept-map order
    assert list(report["concepts"]["collectives"]["exercises"]) == ["2.2", "2.10"]  # numeric order
    table = grade.format_table(report)
    assert "3/6" in table and "50%" in table and "collectives 2.2: 1 test(s)" in table


def _load_root_conftest():
    spec = importlib.util.spec_from_file_location("_tests_root_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args,impl,expected", [
    (["tests"], None, False),
    (["tests/test_quiz.py"], None, False),
    (["tests"], "solutions", True),
    (["tests/exercises"], None, True),
    (["tests/exercises/test_collectives.py::test_x"], None, True),
])
def test_graded_tests_are_opt_in(args, impl, expected):
    conftest = _load_root_conftest()
    config = SimpleNamespace(args=args, invocation_params=SimpleNamespace(dir=ROOT),
                             getoption=lambda name: impl if name == "impl" else None)
    assert conftest.exercises_requested(config) is expected


@INSTRUCTOR
def test_handout_has_no_solutions(tmp_path):
    spec = importlib.util.spec_from_file_location("_make_handout", ROOT / "scripts" / "make_handout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder, tarball, n = module.make_handout(tmp_path)
    assert n > 10 and not (folder / "solutions").exists()
    assert (folder / "labs" / "exercises" / "collectives.py").exists()
    assert (folder / "tests" / "exercises" / "test_collectives.py").exists()
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert not any(name.split("/")[1:2] == ["solutions"] for name in names)
    for nb in folder.rglob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")
    # the handout's own check script knows it has no solutions
    proc = subprocess.run(["bash", "scripts/check_exercises.sh"], cwd=folder, capture_output=True, text=True,
                          env={"PY": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0 and "student handout" in proc.stdout


def _handout_module():
    spec = importlib.util.spec_from_file_location("_make_handout3", ROOT / "scripts" / "make_handout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@INSTRUCTOR
def test_handout_leaves_out_instructor_material(tmp_path):
    folder, _, _ = _handout_module().make_handout(tmp_path)
    assert (folder / "tests" / "exercises" / "guard.py").exists()
    for rel in ("tests/exercises/wrong_answers", "tests/test_wrong_answers.py", "scripts/mutate.py",
                "scripts/mutation_report.py",
                "scripts/make_handout.py"):
        assert not (folder / rel).exists(), f"{rel} is instructor material (near-solutions, or runs over solutions/)"


@INSTRUCTOR
def test_handout_labs_import_only_what_it_ships(tmp_path):
    """Every module a lab imports resolves inside the handout (or among installed libraries): a lab that
    imports solutions/ breaks in the student's copy (lab 08 did)."""
    module = _handout_module()
    folder, _, _ = module.make_handout(tmp_path)
    names = sorted({name for nb in folder.glob("labs/*.ipynb")
                    for name in module.imported_modules(module.notebook_code(nb.read_text()))})
    assert "llama_course.trainer" in names
    probe = ("import importlib.util, sys\nmissing = []\nfor name in sys.argv[1:]:\n    try:\n"
             "        found = importlib.util.find_spec(name) is not None\n    except ImportError:\n"
             "        found = False\n    if not found:\n        missing.append(name)\nprint(' '.join(missing))")
    proc = subprocess.run([sys.executable, "-c", probe, *names], cwd=folder, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [], f"labs import modules the handout does not ship: {proc.stdout}"


@INSTRUCTOR
def test_handout_check_refuses_a_lab_importing_solutions(tmp_path):
    module = _handout_module()
    folder, _, _ = module.make_handout(tmp_path)
    nb = folder / "labs" / "01_llama_basics.ipynb"
    text = json.loads(nb.read_text())
    text["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                          "source": ["%matplotlib inline\n", "from solutions.llama_basics import llama_params\n"]})
    nb.write_text(json.dumps(text))
    with pytest.raises(SystemExit, match="imports solutions"):
        module.check_handout(folder)


@INSTRUCTOR
def test_strip_notebook():
    spec = importlib.util.spec_from_file_location("_make_handout2", ROOT / "scripts" / "make_handout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nb = {"cells": [{"cell_type": "code", "outputs": [{"text": "42"}], "execution_count": 3, "source": "x"},
                    {"cell_type": "markdown", "source": "# hi"}], "metadata": {}, "nbformat": 4}
    stripped = json.loads(module.strip_notebook(json.dumps(nb)))
    assert stripped["cells"][0]["outputs"] == [] and stripped["cells"][0]["execution_count"] is None
    assert stripped["cells"][1] == nb["cells"][1]
