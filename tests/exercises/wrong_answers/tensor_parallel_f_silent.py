"""f written as a plain identity both ways: the forward is right, each rank keeps only its own part of
d(loss)/dx."""

import torch

from solutions.tensor_parallel import *  # noqa: F403

CONCEPT = "tensor_parallel"
WRONG = [{"exercise": "4.6", "fails": ["test_f_is_identity_forward_all_reduce_backward"], "message": "sum of every rank",
          "why": "f without its backward all-reduce"},
         {"exercise": "4.7", "fails": ["test_tp_mlp_matches_the_unsplit_mlp", "test_tp_mlp_one_all_reduce_each_way"],
          "message": "rank", "why": "the MLP built on that f"}]


def copy_to_tp_region(x, group=None):
    return x.view_as(x)


def tp_mlp(x, w1_shard, w2_shard, group=None):
    h = torch.nn.functional.gelu(copy_to_tp_region(x, group) @ w1_shard.T)
    return reduce_from_tp_region(h @ w2_shard.T, group)  # noqa: F405
