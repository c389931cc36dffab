"""The one place graded tests get their implementation from: the student's stubs or the reference.

    load("collectives", "labs")       -> labs.exercises.collectives
    load("collectives", "solutions")  -> solutions.collectives

Graded tests do not import this module themselves: they take the `exercise` fixture
(tests/exercises/conftest.py), which calls `load` with the concept named by the test file
(test_<concept>.py) and the implementation chosen by `pytest --impl labs|solutions`.

Instructors can grade any other module in place of a concept's, with
`LLAMA_COURSE_EXERCISE_MODULES="concept=dotted.module[,concept=module...]"` (spawned workers inherit it):
tests/test_wrong_answers.py grades the plausible wrong answers in tests/exercises/wrong_answers/ this way.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OVERRIDE_ENV = "LLAMA_COURSE_EXERCISE_MODULES"
IMPLS = ("labs", "solutions")
DEFAULT_IMPL = "labs"


def module_name(concept: str, impl: str) -> str:
    """The dotted module that holds `concept`'s exercises for `impl`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return f"labs.exercises.{concept}" if impl == "labs" else f"solutions.{concept}"


def overrides() -> dict:
    """{concept: module} from LLAMA_COURSE_EXERCISE_MODULES (empty when unset)."""
    pairs = [p.split("=", 1) for p in os.environ.get(OVERRIDE_ENV, "").split(",") if "=" in p]
    return {concept.strip(): module.strip() for concept, module in pairs}


def load(concept: str, impl: str = DEFAULT_IMPL) -> ModuleType:
    """Import and return the exercise module of `concept` for `impl` (labs or solutions)."""
    for folder in (ROOT, HERE):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if concept in overrides():
        return importlib.import_module(overrides()[concept])
    if impl == "solutions" and not (ROOT / "solutions").is_dir():
        raise FileNotFoundError("solutions/ is not in this copy of the course (a student handout?): use --impl labs")
    return importlib.import_module(module_name(concept, impl))
