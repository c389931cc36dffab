"""Graded tests for the expert-parallel exercises (labs/exercises/expert_parallel.py), points per test.

Each test checks against a closed form or a direct computation written here (the top-k and its softmax by
hand, the Switch loss counted in loops, the dense mixture of experts in one process), never against the
solution or the course's runtime.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))      # the spawned workers import these by name

from recorders import assert_ranks_finished, calls_of  # noqa: E402  (tests/exercises, on the path above)


def _logits(t: int, e: int, seed: int) -> torch.Tensor:
    return torch.randn(t, e, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Exercise 16.1: route ------------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="16.1")
@pytest.mark.parametrize("t,e,k", [(5, 4, 2), (7, 8, 2), (3, 8, 1), (6, 4, 3), (4, 16, 4)])
def test_route(exercise, t, e, k):
    """Token by token: its k largest logits, largest first, and the softmax of those k alone."""
    logits = _logits(t, e, 10 * t + e + k)
    index, weights = exercise.route(logits, k)
    assert tuple(index.shape) == tuple(weights.shape) == (t, k)
    for i in range(t):
        chosen = sorted(range(e), key=lambda j: -float(logits[i, j]))[:k]
        assert [int(j) for j in index[i]] == chosen, f"token {i}: experts {index[i].tolist()}, want {chosen}"
        z = [math.exp(float(logits[i, j])) for j in chosen]
        want = [v / sum(z) for v in z]
        assert weights[i].tolist() == pytest.approx(want, rel=1e-9), f"token {i}: weights {weights[i].tolist()}"


@pytest.mark.points(1, exercise="16.1")
def test_route_weights_sum_to_one(exercise):
    """Renormalised among the k chosen (Mixtral): a softmax over all E experts, cut to the top k, sums to
    less than 1 and shrinks every token's output."""
    _, weights = exercise.route(_logits(9, 8, 1), 2)
    assert torch.allclose(weights.sum(-1), torch.ones(9, dtype=weights.dtype)), \
        f"a token's weights sum to {weights.sum(-1).tolist()}"


@pytest.mark.points(1, exercise="16.1")
def test_route_top_1_weight_is_one(exercise):
    """With k = 1 the chosen expert's weight is 1 (Switch's top-1 router scales by the full softmax instead)."""
    index, weights = exercise.route(_logits(6, 4, 2), 1)
    assert torch.equal(index[:, 0], _logits(6, 4, 2).argmax(-1)) and torch.allclose(weights, torch.ones_like(weights))


# Exercise 16.2: load_balancing_loss ----------------------------------------------------------------------

def _switch(logits: torch.Tensor, index: torch.Tensor, e: int) -> float:
    t, k = index.shape
    probs = torch.softmax(logits, -1)
    total = 0.0
    for x in range(e):
        f = sum(int(index[i, j]) == x for i in range(t) for j in range(k)) / (t * k)
        p = sum(float(probs[i, x]) for i in range(t)) / t
        total += f * p
    return e * total


@pytest.mark.points(2, exercise="16.2")
@pytest.mark.parametrize("t,e,k", [(6, 4, 2), (10, 8, 2), (5, 4, 1), (8, 8, 3)])
def test_load_balancing_loss(exercise, t, e, k):
    """E sum_e f_e P_e: f_e the share of the T k (token, expert) assignments that go to e, P_e the mean over
    the tokens of the router's softmax over all E."""
    logits = _logits(t, e, 7 * t + k)
    index = logits.topk(k, -1).indices
    got = exercise.load_balancing_loss(logits, index, e)
    assert float(got) == pytest.approx(_switch(logits, index, e), rel=1e-9)


@pytest.mark.points(2, exercise="16.2")
def test_load_balancing_loss_is_one_when_balanced(exercise):
    """A uniform router and an even load give 1, whatever k is (the loss's minimum over the load)."""
    e, t = 4, 8
    for k in (1, 2, 4):
        index = torch.tensor([[(i + j) % e for j in range(k)] for i in range(t)])
        got = float(exercise.load_balancing_loss(torch.zeros(t, e, dtype=torch.float64), index, e))
        assert got == pytest.approx(1.0), f"k {k}: {got}, want 1 (f_e shares the T k assignments)"


@pytest.mark.points(1, exercise="16.2")
def test_load_balancing_loss_trains_the_router(exercise):
    """The gradient reaches the logits through P (f counts assignments, a step function): it equals the
    gradient of E sum_e f_e P_e with f held fixed."""
    logits = _logits(6, 4, 3).requires_grad_()
    index = logits.detach().topk(2, -1).indices
    exercise.load_balancing_loss(logits, index, 4).backward()
    f = torch.tensor([float((index == x).sum()) / index.numel() for x in range(4)], dtype=torch.float64)
    ref = logits.detach().clone().requires_grad_()
    (4 * (f * torch.softmax(ref, -1).mean(0)).sum()).backward()
    assert logits.grad is not None and torch.allclose(logits.grad, ref.grad)


# Exercise 16.3: send_splits ------------------------------------------------------------------------------

@pytest.mark.points(1, exercise="16.3")
def test_send_splits_example(exercise):
    """E = 4 over ep 2: rank 0 owns experts 0, 1 and rank 1 experts 2, 3."""
    index = torch.tensor([[0, 2], [1, 3], [3, 2]])
    got = [int(n) for n in exercise.send_splits(index, 4, 2)]
    assert got == [2, 4], f"{got}: rank 0 owns experts 0, 1 (2 rows), rank 1 owns 2, 3 (4 rows)"


@pytest.mark.points(2, exercise="16.3")
@pytest.mark.parametrize("e,ep,k", [(8, 2, 2), (8, 4, 2), (8, 8, 1), (16, 4, 3), (4, 1, 2)])
def test_send_splits_contiguous_owners(exercise, e, ep, k):
    """Rank r owns experts [r E/ep, (r+1) E/ep): the rows for rank r are the assignments to those experts."""
    index = _logits(12, e, e + ep + k).topk(k, -1).indices
    got = [int(n) for n in exercise.send_splits(index, e, ep)]
    want = [sum(int(r * e // ep <= x < (r + 1) * e // ep) for x in index.flatten().tolist()) for r in range(ep)]
    assert got == want, f"E {e}, ep {ep}: {got}, want {want} (rank r owns experts r E/ep .. (r+1) E/ep - 1)"
    assert sum(got) == index.numel()


@pytest.mark.points(1, exercise="16.3")
@pytest.mark.parametrize("e,ep", [(4, 3), (6, 4), (8, 0)])
def test_send_splits_rejects_bad_ep(exercise, e, ep):
    with pytest.raises(ValueError):
        exercise.send_splits(torch.zeros(2, 1, dtype=torch.long), e, ep)


# Exercise 16.4: dispatch_bytes ---------------------------------------------------------------------------

@pytest.mark.points(2, exercise="16.4")
@pytest.mark.parametrize("b,s,k,dim,tp,cp,e", [(1, 4096, 2, 4096, 1, 1, 2), (2, 8192, 2, 4096, 8, 2, 2),
                                               (1, 4096, 8, 7168, 1, 4, 2), (4, 1024, 1, 512, 2, 1, 4),
                                               (3, 96, 3, 12, 4, 3, 1)])
def test_dispatch_bytes(exercise, b, s, k, dim, tp, cp, e):
    """Every one of the rank's b s/cp tokens leaves k times, its dim / tp on this tensor-parallel rank."""
    got = exercise.dispatch_bytes(b, s, k, dim, tp, cp, e)
    want = b * (s // cp) * k * (dim // tp) * e
    assert got == want and isinstance(got, int), f"{got!r}: an int of {want} bytes"


@pytest.mark.points(1, exercise="16.4")
def test_dispatch_bytes_matches_the_simulator(exercise):
    """The simulator's A (simulator/expert_parallel.dispatch_bytes) for Mixtral 8x7B at 4,096 tokens."""
    from simulator.config import load_config
    from simulator.expert_parallel import dispatch_bytes

    m = load_config({"model": {"preset": "mixtral-8x7b"}}).model
    for tp, cp in ((1, 1), (2, 2), (8, 1)):
        got = exercise.dispatch_bytes(2, 4096, m.experts_per_token, m.dim, tp, cp, 2)
        assert got == pytest.approx(dispatch_bytes(m, 4096, 2, tp, cp, "bf16")), f"tp {tp}, cp {cp}"


@pytest.mark.points(1, exercise="16.4")
@pytest.mark.parametrize("args", [(0, 8, 2, 16), (1, 8, 0, 16), (1, 8, 2, 16, 3), (1, 9, 2, 16, 1, 2),
                                  (1, -8, 2, 16)])
def test_dispatch_bytes_rejects_bad_input(exercise, args):
    with pytest.raises(ValueError):
        exercise.dispatch_bytes(*args)


# Exercise 16.5: expert_parallel_moe on 2 gloo processes ----------------------------------------------------

@pytest.fixture(scope="module")
def moe(exercise):
    from workers_expert_parallel import moe_worker

    from llama_course.core.testing import spawn

    return spawn(moe_worker, 2, exercise.__name__, timeout=120)


@pytest.mark.points(3, exercise="16.5")
def test_expert_parallel_moe_matches_the_dense_layer(moe):
    """Each rank's output equals the dense layer on its tokens in one process: sum_j w_j expert_{i_j}(x)
    (top-1 to top-3, 4 and 8 experts, a rank that keeps all its rows)."""
    assert_ranks_finished(moe)
    for rank, rows in enumerate(moe):
        for case, r in enumerate(rows):
            assert r["shape_ok"], f"rank {rank} case {case}: the output has the tokens' shape"
            assert r["out_diff"] < 1e-10, f"rank {rank} case {case}: output off by {r['out_diff']}"


@pytest.mark.points(2, exercise="16.5")
def test_expert_parallel_moe_forward_is_three_all_to_alls(moe):
    """Recorded on the wire: the forward hands torch.distributed three all-to-alls and nothing else: the E
    int64 counts, this rank's T k rows (dispatch), and the rows its experts ran, sent home (combine)."""
    assert_ranks_finished(moe)
    for rank, rows in enumerate(moe):
        for case, r in enumerate(rows):
            used = {k for k, n in r["forward"]["bytes"].items() if n}
            assert used == {"all_to_all"}, f"rank {rank} case {case}: {sorted(used)} in the forward, all_to_all only"
            want = [r["counts_bytes"], r["sent_bytes"], r["received_bytes"]]
            assert calls_of(r["forward"], "all_to_all") == want, \
                f"rank {rank} case {case}: all-to-alls of {calls_of(r['forward'], 'all_to_all')} bytes; want {want} " \
                f"(counts, dispatch, combine)"


@pytest.mark.points(3, exercise="16.5")
def test_expert_parallel_moe_gradients(moe):
    """The gradients of the tokens, of the routing weights and of this rank's experts equal the dense layer's
    (an expert's gradient sums what every rank's tokens sent it)."""
    assert_ranks_finished(moe)
    for rank, rows in enumerate(moe):
        for case, r in enumerate(rows):
            assert r["dw_diff"] < 1e-10, f"rank {rank} case {case}: routing weights' gradient off by {r['dw_diff']}"
            assert r["dx_diff"] < 1e-10, f"rank {rank} case {case}: tokens' gradient off by {r['dx_diff']}"
            assert r["expert_diff"] < 1e-10, f"rank {rank} case {case}: experts' gradients off by {r['expert_diff']}"


@pytest.mark.points(2, exercise="16.5")
def test_expert_parallel_moe_backward_is_two_all_to_alls(moe):
    """Recorded: the backward hands torch.distributed the two row exchanges reversed, and nothing else: the
    combine's gradient (T k rows) out, then the dispatch's (the rows this rank's experts ran) home."""
    assert_ranks_finished(moe)
    for rank, rows in enumerate(moe):
        for case, r in enumerate(rows):
            used = {k for k, n in r["backward"]["bytes"].items() if n}
            assert used == {"all_to_all"}, \
                f"rank {rank} case {case}: {sorted(used)} in the backward, all_to_all only"
            want = [r["sent_bytes"], r["received_bytes"]]
            assert calls_of(r["backward"], "all_to_all") == want, \
                f"rank {rank} case {case}: all-to-alls of {calls_of(r['backward'], 'all_to_all')} bytes; want {want}"
