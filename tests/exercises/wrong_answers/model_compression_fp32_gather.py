"""A "quantized" all-gather that quantizes and dequantizes locally, gathers float32, and reports the bytes
an int8 gather would have sent."""

from solutions.model_compression import *  # noqa: F403
from solutions.model_compression import quantize_int8

CONCEPT = "model_compression"
WRONG = [{"exercise": "12.5", "fails": ["test_quantized_all_gather_gathers_int8_on_the_wire"], "message": "int8 bytes",
          "why": "gathers fp32 and self-reports int8 bytes"}]


def quantized_all_gather(shard, group=None):
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    q, scale = quantize_int8(shard)
    local = q.float() * scale
    parts = [torch.empty_like(local) for _ in range(n)]
    dist.all_gather(parts, local, group=group)
    sent = (n - 1) * (q.numel() + scale.numel() * 4)
    return torch.cat(parts), sent
