"""The softmax over all E experts, then the top k of the probabilities: the right experts, weights that do not
sum to 1 (Switch's top-1 scaling applied to Mixtral's top-k), every token's output shrunk."""

import torch

from solutions.expert_parallel import *  # noqa: F403

CONCEPT = "expert_parallel"
WRONG = [{"exercise": "16.1", "fails": ["test_route", "test_route_weights_sum_to_one"], "message": "weights",
          "why": "softmax over all E experts instead of the k chosen"}]


def route(logits, k):
    weights, index = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return index, weights
