"""The mask on the rank's local indices 0 .. s/c - 1 instead of its tokens' global positions: rank 0's late
chunk and every query of rank 1 see the wrong keys."""

import torch

import solutions.context_parallel as _s
from solutions.context_parallel import *  # noqa: F403

CONCEPT = "context_parallel"
WRONG = [{"exercise": "15.2", "fails": ["test_causal_mask_on_global_positions"], "message": "global positions",
          "why": "mask on the local indices"},
         {"exercise": "15.4", "fails": ["test_gathered_attention_matches_the_whole_sequence"], "message": "output off",
          "why": "attention masked on the local indices"}]


def causal_mask(q_positions, seq_len):
    return _s.causal_mask(torch.arange(len(q_positions)), seq_len)


def gathered_attention(q, k, v, positions, group=None):
    return _s.gathered_attention(q, k, v, torch.arange(len(positions)), group)
