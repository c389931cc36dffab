"""Contiguous parts instead of head-tail chunks: the sequence is covered and sharding round-trips, but under a
causal mask the last rank computes 2 cp - 1 times the first rank's attention."""

from solutions.context_parallel import *  # noqa: F403

CONCEPT = "context_parallel"
WRONG = [{"exercise": "15.1", "fails": ["test_load_balanced_chunks_balance_the_causal_work"],
          "message": "(query, key) pairs per rank", "why": "contiguous parts: unbalanced causal work"}]


def load_balanced_chunks(seq_len, cp, rank):
    if cp < 1 or not 0 <= rank < cp or seq_len < 1 or seq_len % (2 * cp):
        raise ValueError("bad input")
    n = seq_len // (2 * cp)
    return [(2 * rank * n, (2 * rank + 1) * n), ((2 * rank + 1) * n, (2 * rank + 2) * n)]
