"""Worker for the graded 3-D parallelism exercise 6.5 (spawned by llama_course.core.testing.spawn).

On 4 gloo ranks, for several (dp, tp, pp) grids, builds the student's groups and all-reduces a one-hot
vector of this rank over each of them: the result is exactly the set of ranks in the group.
"""

from __future__ import annotations


def groups_worker(rank: int, world_size: int, impl: str, layouts: list) -> list:
    import torch
    import torch.distributed as dist
    from adapter import load
    from guard import guarded

    exercise = guarded(load("parallel_3d", impl), "parallel_3d")
    out = []
    for dp, tp, pp in layouts:
        groups = exercise.new_process_groups(rank, dp, tp, pp)
        members = {}
        for kind in ("tp", "dp", "pp"):
            onehot = torch.zeros(world_size)
            onehot[rank] = 1.0
            dist.all_reduce(onehot, group=groups[kind])
            members[kind] = [r for r in range(world_size) if onehot[r] > 0]
        out.append(members)
    return out
