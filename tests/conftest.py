"""Shared pytest setup. The graded exercise tests (tests/exercises/) are opt-in.

    pytest tests                                   the package's own tests; tests/exercises is skipped
    pytest tests/exercises                         grade the stubs in labs/exercises (what a student runs)
    pytest tests/exercises --impl solutions        grade the reference solutions (CI: all must pass)
    pytest tests/exercises --impl labs --stubs-must-fail   CI: every graded test must fail on a stub
    pytest tests/exercises/test_collectives.py --exercise 2.6   one exercise's graded tests

The graded tests fail on the stubs by design, so a plain `pytest tests` leaves them out unless `--impl`
is given or tests/exercises is named on the command line. `llama-course grade` runs them for you and
writes a score report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "tests" / "exercises"

# the simulator's `cpu` predictions in tests use the shipped profile, not one `llama-course bench` left in
# the user's cache (spawned processes inherit the variable)
os.environ.setdefault("LLAMA_COURSE_CPU_PROFILE", str(ROOT / "simulator" / "profiles" / "cpu.json"))

# strict mode (llama_course/core/wire.py): every test process, spawned ranks and CLI runs included, enforces
# NCCL's rules on gloo (batched point-to-point, rendezvous, tensors on the engine's device), so CPU CI
# catches what would hang on GPUs. LLAMA_COURSE_STRICT=0 pytest ... switches it off to compare.
os.environ.setdefault("LLAMA_COURSE_STRICT", "1")

# property tests draw the same examples on every run, so a green CI stays green for the same code;
# HYPOTHESIS_PROFILE=explore draws new ones (run it when changing a property or what it tests)
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("course", derandomize=True)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "course"))
except ImportError:
    pass

# labs/ and solutions/ are importable packages at the repository root (not installed with the wheel)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_addoption(parser):
    group = parser.getgroup("llama-course exercises")
    group.addoption("--impl", choices=["labs", "solutions"], default=None,
                    help="which implementation the graded tests import: labs (default) or solutions")
    group.addoption("--grade-report", metavar="FILE", default=None,
                    help="write each graded test's outcome and points to FILE as JSON")
    group.addoption("--stubs-must-fail", action="store_true", default=False,
                    help="CI check: every graded test must fail (strict xfail), as it does on a stub")
    group.addoption("--exercise", action="append", default=None, metavar="N.M",
                    help="run only the graded tests of exercise N.M (repeatable)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "points(n, exercise=None): a graded test worth n points, for exercise 'C.E' of its concept")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def exercises_requested(config) -> bool:
    """True when --impl was given or a command-line path lies inside tests/exercises."""
    if config.getoption("impl") is not None:
        return True
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = Path(str(arg).split("::")[0])
        if _inside(path if path.is_absolute() else base / path, EXERCISES):
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if _inside(Path(collection_path), EXERCISES) and not exercises_requested(config):
        return True
    return None
