"""Top-k with error feedback, then a dense all-reduce of the sparsified gradient: the same average, every
byte of the dense gradient still on the wire."""

from solutions.communication_compression import *  # noqa: F403
from solutions.communication_compression import topk_error_feedback

CONCEPT = "communication_compression"
WRONG = [{"exercise": "11.4", "fails": ["test_topk_all_reduce_sends_only_the_top_k"], "message": "bytes on the wire",
          "why": "sparsifies, then all-reduces the dense tensor: no bytes saved"}]


def topk_all_reduce(grad, residual, k, group=None):
    import torch
    import torch.distributed as dist

    indices, values, new_residual = topk_error_feedback(grad, residual, k)
    residual.copy_(new_residual)
    dense = torch.zeros_like(grad)
    dense[indices] = values
    dist.all_reduce(dense, group=group)
    return dense / dist.get_world_size(group)
