"""Graded tests: the `exercise` fixture, points per test, and the score report.

A graded test lives in tests/exercises/test_<concept>.py, takes the `exercise` fixture (the module of
that concept from labs.exercises or solutions, chosen by --impl) and carries its points:

    @pytest.mark.points(2, exercise="2.1")
    def test_ring_bytes(exercise):
        assert exercise.ring_all_reduce_bytes(100, 4) == 150

A test without a points marker is a usage error: every graded test must say what it is worth.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load_adapter():
    name = "llama_course_exercise_adapter"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "adapter.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


adapter = _load_adapter()


def concept_of(path) -> str:
    """test_<concept>.py -> <concept>."""
    return Path(str(path)).stem.removeprefix("test_")


def impl_of(config) -> str:
    return config.getoption("impl") or adapter.DEFAULT_IMPL


def _load_guard():
    name = "llama_course_exercise_guard"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "guard.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


guard = _load_guard()


@pytest.fixture(scope="module")
def exercise(request):
    """The exercise module of this test file's concept, from the implementation chosen by --impl.

    Its public functions run under the leak guard (tests/exercises/guard.py): a call that runs the course's
    own implementation of the concept, or a graded test's oracle, fails with LeakError."""
    concept = concept_of(request.module.__file__)
    return guard.guarded(adapter.load(concept, impl_of(request.config)), concept)


@pytest.fixture(scope="module")
def impl(request) -> str:
    """'labs' or 'solutions'."""
    return impl_of(request.config)


class GradeRecorder:
    """Collects each graded test's points and outcome; writes the --grade-report JSON."""

    def __init__(self):
        self.items: dict = {}        # nodeid -> {concept, exercise, points}
        self.outcomes: dict = {}     # nodeid -> (outcome, message)

    def add_item(self, item, marker):
        points = marker.args[0] if marker.args else marker.kwargs.get("n")
        if not isinstance(points, (int, float)) or points <= 0:
            raise pytest.UsageError(f"{item.nodeid}: points marker needs a positive number, got {points!r}")
        self.items[item.nodeid] = dict(concept=concept_of(item.path), exercise=marker.kwargs.get("exercise"),
                                       points=points)

    def add_report(self, report):
        if report.nodeid not in self.items:
            return
        previous = self.outcomes.get(report.nodeid, ("passed", ""))
        if previous[0] != "passed":
            return                                    # the first failure of setup/call/teardown wins
        if report.failed:
            self.outcomes[report.nodeid] = ("failed" if report.when == "call" else "error", _message(report))
        elif report.skipped:
            self.outcomes[report.nodeid] = ("skipped", _message(report))
        elif report.when == "call":
            xfailed = hasattr(report, "wasxfail")
            self.outcomes[report.nodeid] = ("xfailed" if xfailed else "passed", "")

    def tests(self) -> list:
        rows = []
        for nodeid, info in self.items.items():
            outcome, message = self.outcomes.get(nodeid, ("not run", ""))
            earned = info["points"] if outcome == "passed" else 0
            rows.append(dict(nodeid=nodeid, **info, outcome=outcome, earned=earned, message=message))
        return rows


def _message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0][:300] if crash.message else ""
    if isinstance(report.longrepr, tuple):                  # skips: (file, line, reason)
        return str(report.longrepr[-1])[:300]
    return str(report.longrepr or "").strip().splitlines()[-1][:300] if report.longrepr else ""


_recorder = GradeRecorder()


def pytest_collection_modifyitems(session, config, items):
    must_fail = config.getoption("stubs_must_fail")
    only = config.getoption("exercise")
    if only:
        keep = [i for i in items if not str(i.path).startswith(str(HERE))
                or (i.get_closest_marker("points") and i.get_closest_marker("points").kwargs.get("exercise") in only)]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    for item in items:
        if not str(item.path).startswith(str(HERE)):
            continue
        marker = item.get_closest_marker("points")
        if marker is None:
            raise pytest.UsageError(f"{item.nodeid}: a graded test needs @pytest.mark.points(n, exercise=...)")
        _recorder.add_item(item, marker)
        item.user_properties.append(("points", _recorder.items[item.nodeid]["points"]))
        if must_fail:
            item.add_marker(pytest.mark.xfail(strict=True, reason="graded test run against a stub: must fail"))


def pytest_runtest_logreport(report):
    _recorder.add_report(report)


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("grade_report")
    if not path:
        return
    report = dict(impl=impl_of(session.config), pytest_exit_code=int(exitstatus), tests=_recorder.tests())
    Path(path).write_text(json.dumps(report, indent=2))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = _recorder.tests()
    if not rows or config.getoption("stubs_must_fail"):
        return
    earned = sum(r["earned"] for r in rows)
    possible = sum(r["points"] for r in rows)
    terminalreporter.write_sep("=", f"graded ({impl_of(config)}): {earned:g}/{possible:g} points")
