"""Worker functions for tests/test_fault_tolerance.py (importable by name for llama_course.core.testing.spawn)."""

import time
from datetime import timedelta

import torch
import torch.distributed as dist


def hung_peer(rank, world_size):
    """Both ranks pass step 1; at step 2 rank 1 hangs (never joins), rank 0's all-reduce times out."""
    from llama_course.coordination.fault_tolerance import FailureDetector
    from llama_course.core.distributed import Context

    ctx = Context(rank=rank, world_size=world_size)
    group = dist.new_group(timeout=timedelta(seconds=2))
    detector = FailureDetector(ctx)
    detector.arrive(1)
    dist.all_reduce(torch.ones(1), group=group)
    if rank == 1:
        time.sleep(4)
        return None
    detector.arrive(2)
    try:
        dist.all_reduce(torch.ones(1), group=group)
    except RuntimeError as e:
        return str(detector.failure(2, e))
    return "no error"
