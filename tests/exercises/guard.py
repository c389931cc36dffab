"""No answer by import: a graded call may not run the course's own implementation or the tests' oracles.

The student's handout ships the whole package (labs call it), so `llama_course.parallel.collectives` and
`simulator.cluster_scheduling.schedule` are one import away from an exercise that asks for a ring
all-reduce or a FIFO schedule. Stubbing them out of the handout would break the labs that use them, and a
list of banned names is beaten by an alias (`from x import y as z`) or by `getattr`. So the graded tests
watch what actually *runs*: while the student's code runs, a profile hook (`sys.setprofile`, and
`threading.setprofile` for threads started meanwhile) sees every Python function call, and a call whose
code lives in one of the concept's FORBIDDEN files is recorded, whatever name it was reached by. When the
student's call returns, a recorded call fails the test with LeakError (an AssertionError) naming it.

    exercise = guarded(module, "collectives")     # every public function of module runs under the guard
    with watching("data_parallel"):              # or a region (a worker that drives a student's class)
        ...

FORBIDDEN lists, per concept, the package files that implement it (runtime and cost model) and the
PyTorch modules the graded tests use as oracles (torch's DDP, FSDP, DTensor, pipelining,
clip_grad_norm_, AdamW). Code that runs because a module is being imported during the call does not count.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_TORCH = {
    "ddp": "torch:nn/parallel/distributed.py",
    "fsdp": "torch:distributed/fsdp/",
    "composable": "torch:distributed/_composable/",
    "dtensor": "torch:distributed/tensor/",
    "autograd_collectives": "torch:distributed/nn/",
    "pipelining": "torch:distributed/pipelining/",
    "device_mesh": "torch:distributed/device_mesh.py",
    "comm_hooks": "torch:distributed/algorithms/",
    "zero_optimizer": "torch:distributed/optim/",
    "dcp": "torch:distributed/checkpoint/",
    "adam": "torch:optim/adam.py",
    "adamw": "torch:optim/adamw.py",
    "clip_grad": "torch:nn/utils/clip_grad.py",
}

FORBIDDEN = {
    "llama_basics": ["simulator/workload.py", "simulator/memory.py", "simulator/compute.py",
                     "llama_course/core/data.py", "llama_course/core/model.py", "llama_course/core/profiling.py"],
    "collectives": ["simulator/collectives.py", "simulator/network.py", "simulator/topology.py",
                    "llama_course/parallel/collectives.py"],
    "data_parallel": ["simulator/data_parallel.py", "simulator/memory.py", "llama_course/parallel/data_parallel.py",
                      "llama_course/parallel/collectives.py", "llama_course/core/optimizers.py",
                      _TORCH["ddp"], _TORCH["fsdp"], _TORCH["composable"], _TORCH["dtensor"],
                      _TORCH["comm_hooks"], _TORCH["zero_optimizer"], _TORCH["adam"], _TORCH["adamw"],
                      _TORCH["clip_grad"], _TORCH["autograd_collectives"]],
    "tensor_parallel": ["simulator/tensor_parallel.py", "llama_course/parallel/tensor_parallel.py",
                        "llama_course/parallel/tensor_parallel_comm.py", _TORCH["dtensor"],
                        _TORCH["autograd_collectives"]],
    "pipeline_parallel": ["simulator/pipeline_parallel.py", "llama_course/parallel/pipeline_parallel.py",
                          "llama_course/parallel/pipeline_parallel_comm.py", "llama_course/parallel/balanced_stages.py",
                          _TORCH["pipelining"]],
    "parallel_3d": ["simulator/parallel_3d.py", "simulator/plan.py", "simulator/memory.py",
                    "llama_course/parallel/parallel_3d.py", "llama_course/core/distributed.py", _TORCH["device_mesh"]],
    "parameter_server": ["simulator/parameter_server.py", "llama_course/coordination/parameter_server.py"],
    "sync_async": ["simulator/sync_async.py", "llama_course/coordination/sync_async.py"],
    "load_balancing": ["simulator/load_balancing.py", "llama_course/coordination/load_balancing.py",
                       "llama_course/core/data.py", "llama_course/parallel/balanced_stages.py"],
    "fault_tolerance": ["simulator/fault_tolerance.py", "llama_course/core/checkpoint.py",
                        "llama_course/core/checkpoint_read.py",
                        "llama_course/coordination/fault_tolerance.py",
                        "llama_course/coordination/fault_tolerance_comm.py",
                        "llama_course/coordination/fault_tolerance_torchft.py", _TORCH["dcp"]],
    "communication_compression": ["simulator/data_parallel.py", "llama_course/parallel/communication_compression.py",
                                  _TORCH["comm_hooks"]],
    "model_compression": ["simulator/model_compression.py", "llama_course/core/quantization.py",
                          "llama_course/compression/"],
    "cluster_scheduling": ["simulator/cluster_scheduling.py"],
    "profiling": ["simulator/trace.py", "llama_course/core/profiling.py", "llama_course/commands/compare.py"],
    "context_parallel": ["simulator/context_parallel.py", "simulator/spec.py",
                         "llama_course/parallel/context_parallel.py",
                         "llama_course/parallel/context_parallel_comm.py", _TORCH["dtensor"],
                         _TORCH["autograd_collectives"]],
    "expert_parallel": ["simulator/expert_parallel.py", "llama_course/core/moe.py",
                        "llama_course/parallel/expert_parallel.py", "llama_course/parallel/expert_parallel_comm.py",
                        _TORCH["autograd_collectives"]],
}


class LeakError(AssertionError):
    """The answer ran the course's implementation, or a graded test's oracle, instead of its own code."""


def forbidden_paths(concept: str) -> tuple:
    """Absolute path prefixes (files, or folders ending in /) that the answers of `concept` may not run."""
    torch_dir = None
    out = []
    for entry in FORBIDDEN.get(concept, ()):
        if entry.startswith("torch:"):
            if torch_dir is None:
                import torch

                torch_dir = Path(torch.__file__).resolve().parent
            base, rel = torch_dir, entry.removeprefix("torch:")
        else:
            base, rel = ROOT, entry
        path = str((base / rel).resolve())
        out.append(path + os.sep if rel.endswith("/") else path)
    return tuple(out)


def _depth(frame) -> int:
    n = 0
    while frame is not None:
        n, frame = n + 1, frame.f_back
    return n


def _importing(frame, base: int) -> bool:
    """True if the frame runs as part of an import started inside the watched block (a module or class body,
    or a decorator it runs): some frame between it and the block (deeper than `base`) is importlib's."""
    for _ in range(_depth(frame) - base):
        if frame.f_code.co_name == "<module>" or frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _Watch:
    """One watched region: the forbidden prefixes and what was called from them."""

    def __init__(self, concept: str, base: int):
        self.concept, self.base = concept, base         # base: stack depth of the frame that opened the block
        self.prefixes = forbidden_paths(concept)
        self.seen: dict = {}          # "module.function" -> file
        self._verdict: dict = {}      # co_filename -> forbidden?

    def hook(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        name = code.co_filename
        bad = self._verdict.get(name)
        if bad is None:
            try:
                real = os.path.realpath(name)
            except (TypeError, ValueError):
                real = name
            bad = self._verdict[name] = any(real == p or (p.endswith(os.sep) and real.startswith(p))
                                            for p in self.prefixes)
        if bad and not _importing(frame, self.base):
            module = frame.f_globals.get("__name__", "?")
            self.seen.setdefault(f"{module}.{getattr(code, 'co_qualname', code.co_name)}", name)

    def check(self, what: str) -> None:
        if self.seen:
            calls = ", ".join(sorted(self.seen)[:4])
            raise LeakError(f"{what} called {calls}: the course's own implementation (or a graded test's oracle) "
                            f"of {self.concept}; an answer must compute it itself")


_active: list = []
_outer_profile: list = []


def _dispatch(frame, event, arg):
    for watch in _active:
        watch.hook(frame, event, arg)


@contextmanager
def watching(concept: str, what: str = "the answer"):
    """Fail with LeakError if the block runs a FORBIDDEN file of `concept` (checked when the block ends)."""
    watch = _Watch(concept, _depth(sys._getframe()) - 2)      # minus this generator and contextlib's __enter__
    if not _active:
        _outer_profile[:] = [sys.getprofile()]
        threading.setprofile(_dispatch)
    _active.append(watch)
    sys.setprofile(_dispatch)
    try:
        yield watch
    finally:
        tampered = sys.getprofile() is not _dispatch
        _active.remove(watch)
        if _active:
            sys.setprofile(_dispatch)
        else:
            outer = _outer_profile[0]
            sys.setprofile(outer if callable(outer) else None)   # a C-level profiler cannot be put back
            threading.setprofile(None)
    if tampered:
        raise LeakError(f"{what} switched off the profile hook the graded tests watch with (sys.setprofile)")
    watch.check(what)


def guarded_call(fn, concept: str, name: str | None = None):
    """`fn` wrapped so that each call runs under `watching(concept)`."""
    label = f"{concept}.{name or getattr(fn, '__name__', 'function')}"

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with watching(concept, label):
            return fn(*args, **kwargs)

    return call


class GuardedModule:
    """A read-only view of an exercise module whose public functions run under the guard."""

    def __init__(self, module, concept: str):
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_concept", concept)

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if callable(value) and not name.startswith("_") and not isinstance(value, type):
            return guarded_call(value, self._concept, name)
        return value

    def __repr__(self):
        return f"<guarded {self._module.__name__} ({self._concept})>"


def guarded(module, concept: str) -> GuardedModule:
    """`module` (an exercise module) whose public functions fail with LeakError if they run FORBIDDEN code."""
    return GuardedModule(module, concept)
