"""Vocab-parallel cross-entropy that all-reduces zero-padded full logits (a gather by another name), then
computes the loss on the whole vocabulary: right loss and gradient, N x V numbers on the wire."""

from solutions.tensor_parallel import *  # noqa: F403

CONCEPT = "tensor_parallel"
WRONG = [{"exercise": "4.5", "fails": ["test_vocab_parallel_cross_entropy_sends_n_numbers"], "message": "bytes all-reduced",
          "why": "all-reduces the zero-padded logits: gathers them through all_reduce"}]


def vocab_parallel_cross_entropy(logits, targets, vocab_start, group=None):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    n, width = logits.shape
    full = torch.zeros(n, width * dist.get_world_size(group))
    full[:, vocab_start:vocab_start + width] = logits.detach().float()
    dist.all_reduce(full, group=group)
    full.requires_grad_()
    loss = F.cross_entropy(full, targets, reduction="none")
    loss.mean().backward()
    return loss.detach(), full.grad[:, vocab_start:vocab_start + width]
