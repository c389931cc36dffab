"""Runs on each gloo rank of the graded test of exercise 10.5 (tests/exercises/test_fault_tolerance.py)."""

from __future__ import annotations

import importlib
import os

from guard import guarded
from recorders import DiskLog


def check_sharded_checkpoint(rank: int, world: int, module_name: str, root: str) -> dict:
    """Two saves, then loads: after the first, after the second, after a crashed third (a .tmp folder only),
    and after a 'latest' that points at a folder without a manifest."""
    import torch
    import torch.distributed as dist

    exercise = guarded(importlib.import_module(module_name), "fault_tolerance")
    out = {"error": "", "paths": [], "loads": {}, "disk": [], "snapshots": []}

    def state(step):
        return {"w": torch.arange(6, dtype=torch.float32).view(2, 3) * (rank + 1) + step, "step": torch.tensor(step)}

    try:
        for step in (3, 7):
            with DiskLog() as disk:
                out["paths"].append(exercise.sharded_save(root, step, state(step)))
            out["disk"] += disk.events
            out["snapshots"].append(_snapshot(root, step))
            got = exercise.sharded_load(root, rank)
            out["loads"][f"after_{step}"] = None if got is None else (got[0], bool(torch.equal(got[1]["w"], state(step)["w"])))
        dist.barrier()
        if rank == 0:                                    # a crash in the middle of step 9's save
            os.makedirs(os.path.join(root, "step_00000009.tmp"))
            torch.save(state(9), os.path.join(root, "step_00000009.tmp", f"rank_{0:05d}.pt"))
        dist.barrier()
        got = exercise.sharded_load(root, rank)
        out["loads"]["after_crash"] = None if got is None else (got[0], bool(torch.equal(got[1]["w"], state(7)["w"])))
        dist.barrier()
        if rank == 0:                                    # 'latest' names a folder that never got its manifest
            os.makedirs(os.path.join(root, "step_00000011"))
            with open(os.path.join(root, "latest"), "w") as f:
                f.write("step_00000011")
        dist.barrier()
        got = exercise.sharded_load(root, rank)
        out["loads"]["bad_latest"] = None if got is None else (got[0], bool(torch.equal(got[1]["w"], state(7)["w"])))
        out["files"] = sorted(os.listdir(root))
    except NotImplementedError as e:
        out["error"] = f"NotImplementedError: {e}"
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def _snapshot(root: str, step: int) -> dict:
    """What the save left: {path: (inode, size)} of the step folder's files and of `latest`."""
    folder = os.path.join(root, f"step_{step:08d}")
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))] if os.path.isdir(folder) else []
    paths.append(os.path.join(root, "latest"))
    out = {}
    for path in paths:
        if os.path.exists(path):
            st = os.stat(path)
            out[path] = (st.st_ino, st.st_size)
    return out
