"""Experts dealt round-robin (expert e on rank e % ep) instead of in contiguous blocks: the splits sum to T k,
and they are the wrong ranks' rows."""

import torch

from solutions.expert_parallel import *  # noqa: F403

CONCEPT = "expert_parallel"
WRONG = [{"exercise": "16.3", "fails": ["test_send_splits_example"],
          "message": "owns", "why": "expert e owned by rank e % ep"}]


def send_splits(index, n_experts, ep):
    if ep < 1 or n_experts % ep:
        raise ValueError("bad ep")
    counts = torch.bincount(index.flatten(), minlength=n_experts)
    return [int(c) for c in counts.view(-1, ep).sum(0)]
