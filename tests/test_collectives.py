"""Collectives on send/recv (llama_course/parallel/collectives.py) against torch.distributed's own, on gloo."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import workers_collectives  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from llama_course.parallel import collectives as C  # noqa: E402


def test_chunk_sizes_cover_and_balance():
    for n in range(0, 40):
        for w in range(1, 6):
            sizes = C.chunk_sizes(n, w)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
            lo = 0
            for i, s in enumerate(sizes):
                assert C.chunk_range(n, w, i) == (lo, lo + s)
                lo += s


@pytest.mark.parametrize("world", [2, 3, 4])
def test_collectives_match_torch_distributed(world):
    """Every collective against torch.distributed's; 3 ranks (and a 3-rank sub-group of 4) take
    halving-doubling's non-power-of-two path: the extra rank folds into a partner and gets the result back."""
    results = spawn(workers_collectives.check_all, world, timeout=150)
    assert results == [[]] * world, results


@pytest.mark.parametrize("world", [2, 3])
def test_collectives_follow_nccl_rules_in_strict_mode(world):
    """Every exchange posted as batch_isend_irecv, paired with the peer's (a ring of 2 ranks that each
    receive before they send deadlocks on NCCL), and the results still equal torch.distributed's."""
    results = spawn(workers_collectives.strict_rings, world, timeout=150)
    for r in results:
        assert all(r["ok"].values()), r["ok"]
        assert r["ops"] == {"ring": ["batch_isend_irecv"], "halving_doubling": ["batch_isend_irecv"]}
