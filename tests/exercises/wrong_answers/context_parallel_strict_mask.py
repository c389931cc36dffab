"""`>` instead of `>=`: a token does not see itself, and the first token sees nothing at all."""

from solutions.context_parallel import *  # noqa: F403

CONCEPT = "context_parallel"
WRONG = [{"exercise": "15.2", "fails": ["test_causal_mask_a_token_sees_itself"], "message": "assert",
          "why": "strict mask: the diagonal is masked"}]


def causal_mask(q_positions, seq_len):
    import torch

    return q_positions.reshape(-1, 1) > torch.arange(seq_len).reshape(1, -1)
