"""sharded_save that points `latest` at the new step before renaming the step's folder into place: loads
still work (sharded_load falls back), but a crash between the two leaves `latest` naming nothing."""

import json
import os

from solutions.fault_tolerance import *  # noqa: F403
from solutions.fault_tolerance import atomic_write

CONCEPT = "fault_tolerance"
WRONG = [{"exercise": "10.5", "fails": ["test_sharded_save_commits_in_order"], "message": "latest",
          "why": "updates latest before the folder's rename"}]


def sharded_save(root, step, state, group=None):
    import torch
    import torch.distributed as dist

    rank, n = dist.get_rank(group), dist.get_world_size(group)
    name = f"step_{step:08d}"
    tmp, final = os.path.join(root, name + ".tmp"), os.path.join(root, name)
    if rank == 0:
        os.makedirs(tmp, exist_ok=True)
    dist.barrier(group=group)
    files = [f"rank_{r:05d}.pt" for r in range(n)]
    atomic_write(os.path.join(tmp, files[rank]), lambda f: torch.save(state, f))
    dist.barrier(group=group)
    if rank == 0:
        manifest = json.dumps({"step": step, "world_size": n, "files": files}).encode()
        atomic_write(os.path.join(tmp, "manifest.json"), lambda f: f.write(manifest))
        atomic_write(os.path.join(root, "latest"), lambda f: f.write(name.encode()))
        os.replace(tmp, final)
    dist.barrier(group=group)
    return final
