"""The one place graded tests get their implementation from: the student's stubs or the reference.

    load("collectives", "labs")       -> labs.exercises.collectives
    load("collectives", "solutions")  -> solutions.collectives

Graded tests do not import this module themselves: they take the `exercise` fixture
(tests/exercises/conftest.py), which calls `load` with the concept named by the test file
(test_<concept>.py) and the implementation chosen by `pytest --impl labs|solutions`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
IMPLS = ("labs", "solutions")
DEFAULT_IMPL = "labs"


def module_name(concept: str, impl: str) -> str:
    """The dotted module that holds `concept`'s exercises for `impl`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return f"labs.exercises.{concept}" if impl == "labs" else f"solutions.{concept}"


def load(concept: str, impl: str = DEFAULT_IMPL) -> ModuleType:
    """Import and return the exercise module of `concept` for `impl` (labs or solutions)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if impl == "solutions" and not (ROOT / "solutions").is_dir():
        raise FileNotFoundError("solutions/ is not in this copy of the course (a student handout?): use --impl labs")
    return importlib.import_module(module_name(concept, impl))
