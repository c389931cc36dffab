"""The oracles handed in: PyTorch's DistributedDataParallel inside BucketedDDP; FSDP's gradient all-reduced
whole then sliced (ZeRO-1/2 traffic)."""

import torch
import torch.distributed as dist

import solutions.data_parallel as _reference
from solutions.data_parallel import *  # noqa: F403

CONCEPT = "data_parallel"
WRONG = [{"exercise": "3.6", "fails": ["test_bucketed_ddp_matches_one_process"], "message": "LeakError",
          "why": "wraps torch.nn.parallel.DistributedDataParallel"},
         {"exercise": "3.7", "fails": ["test_fsdp_wire"], "message": "reduce-scatters",
          "why": "all-reduces each layer's whole gradient and keeps a slice"}]


class BucketedDDP(torch.nn.Module):
    def __init__(self, module, bucket_size_mb, group=None):
        super().__init__()
        self.ddp = torch.nn.parallel.DistributedDataParallel(module, bucket_cap_mb=bucket_size_mb,
                                                             process_group=group)

    def forward(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def finish_gradient_synchronization(self):
        pass


def fsdp_forward_backward(shards, shapes, x, target, apply_layer, group=None):
    real = dist.reduce_scatter_tensor

    def all_reduce_then_slice(output, inp, group=None, **kwargs):
        whole = inp.clone()
        dist.all_reduce(whole, group=group)
        output.copy_(whole.chunk(dist.get_world_size(group))[dist.get_rank(group)])

    dist.reduce_scatter_tensor = all_reduce_then_slice
    try:
        return _reference.fsdp_forward_backward(shards, shapes, x, target, apply_layer, group)
    finally:
        dist.reduce_scatter_tensor = real
