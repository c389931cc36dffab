"""g that all-reduces in both directions: the forward sum is right, the gradient comes back t times too big."""

import torch
import torch.distributed as dist

from solutions.tensor_parallel import *  # noqa: F403

CONCEPT = "tensor_parallel"
WRONG = [{"exercise": "4.6", "fails": ["test_g_is_all_reduce_forward_identity_backward"], "message": "identity",
          "why": "g's backward all-reduces too"}]


class _Both(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def reduce_from_tp_region(x, group=None):
    return _Both.apply(x, group)
