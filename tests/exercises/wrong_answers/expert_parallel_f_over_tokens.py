"""f_e as the share of TOKENS sent to e instead of the share of the T k assignments: the f_e sum to k, so the
loss is k times Switch's (k = 1 hides it)."""

import torch

from solutions.expert_parallel import *  # noqa: F403

CONCEPT = "expert_parallel"
WRONG = [{"exercise": "16.2", "fails": ["test_load_balancing_loss_is_one_when_balanced"], "message": "want 1",
          "why": "f_e counted over tokens, not assignments"}]


def load_balancing_loss(logits, index, n_experts):
    counts = torch.bincount(index.flatten(), minlength=n_experts).to(logits.dtype)
    f = counts / index.shape[0]
    p = torch.softmax(logits, dim=-1).mean(0)
    return n_experts * (f * p).sum()
