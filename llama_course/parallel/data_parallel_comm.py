"""Data-parallel communication plumbing: the flat buffers collectives move, and the bucket plan.

data_parallel.py decides when gradients move and what each rank keeps (naive, bucketed, ZeRO-1/2/3);
this module holds what it moves them in:

    Unit          parameters flattened into one buffer: a gradient bucket (ZeRO 0-2) or one block (ZeRO-3);
                  rank r owns chunk r, elements [lo, hi) (collectives.chunk_range): what a reduce-scatter
                  leaves on it and what its all-gather contributes
    bucket_plan   which parameters share a bucket: reverse registration order (about the order backward
                  produces gradients), ~bucket_mb MiB each, the first at most 1 MiB (as DDP) so that
                  communication starts early in backward; bucket_mb 0 = one bucket per tensor
    a second dp group for the communication thread (collectives.CommThread), so that overlapped
                  buckets never interleave with the main thread's collectives on one group
"""

from __future__ import annotations

import torch.distributed as dist

from llama_course.core.distributed import default_timeout
from llama_course.parallel import collectives as C
from simulator import spec


class Unit:
    """Parameters flattened into one buffer: a gradient bucket (stages 0-2) or one layer (stage 3).
    Rank r owns elements [lo, hi) = chunk r of the flat buffer (collectives.chunk_range)."""

    def __init__(self, index: int, params: list, n_ranks: int, rank: int):
        self.index, self.params = index, params
        self.offsets, o = [], 0
        for p in params:
            self.offsets.append(o)
            o += p.numel()
        self.numel = o
        self.lo, self.hi = C.chunk_range(o, n_ranks, rank)
        self.layout = [(off, tuple(p.shape)) for off, p in zip(self.offsets, params)]
        self.ids = [id(p) for p in params]
        self.dtype, self.device = params[0].dtype, params[0].device
        self.flat = self.shard = self.grad_flat = self.grad_shard = None
        self.ready: set = set()          # ids of params whose gradient of this backward has arrived
        self.launched = self.packed = False
        self.unused: set = set()          # ids of params no rank used this step (grad stays None)
        self.gathered = True

    def slices(self):
        for p, off in zip(self.params, self.offsets):
            yield p, off, off + p.numel()


def bucket_plan(trainable: list, bucket_mb: float) -> list:
    """Lists of parameters, one per bucket, in the order backward produces their gradients (reverse
    registration order); ~bucket_mb MiB each (0: per tensor), the first at most 1 MiB, as in DDP: the plan
    of simulator/spec.py, which the simulator uses."""
    order = list(reversed(trainable))
    plan = spec.bucket_plan([q.numel() * q.element_size() for q in order], bucket_mb)
    return [[order[j] for j in ids] for ids in plan]


def _copy_of_dp_group(ctx):
    """A second process group over this rank's dp group (every rank creates every dp group, in order)."""
    mine = None
    for ranks in spec.groups("dp", ctx.dp, ctx.tp, ctx.pp):
        group = dist.new_group(ranks, timeout=default_timeout())
        if ctx.rank in ranks:
            mine = group
    return mine
