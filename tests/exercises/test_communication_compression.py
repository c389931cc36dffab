"""Graded tests for the communication_compression exercises, points per test case.

Checked against byte formulas written here, direct tensor computations (sorting, SVD) and, for 11.4, the
average of each rank's top-k computed in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


# Exercise 11.1: wire_bytes ------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="11.1")
def test_wire_bytes_dense(exercise):
    for n in (2, 4, 64):
        ring = 2 * (n - 1) / n
        assert exercise.wire_bytes("none", 1_000_000, n) == pytest.approx(ring * 4e6)
        assert exercise.wire_bytes("bf16", 1_000_000, n) == pytest.approx(ring * 2e6)
        assert exercise.wire_bytes("fp16", 1_000_000, n) == pytest.approx(ring * 2e6)


@pytest.mark.points(2, exercise="11.1")
def test_wire_bytes_topk_and_powersgd(exercise):
    assert exercise.wire_bytes("topk", 1_000_000, 4, ratio=0.01) == pytest.approx(3 * 8 * 10_000)
    assert exercise.wire_bytes("topk", 10, 2, ratio=0.01) == pytest.approx(8)            # k >= 1
    assert exercise.wire_bytes("powersgd", 4096 * 11008, 8, shape=(4096, 11008), rank=4) == \
        pytest.approx(2 * 7 / 8 * 4 * 4 * (4096 + 11008))
    assert exercise.wire_bytes("powersgd", 6, 2, shape=(2, 3), rank=4) == pytest.approx(1 * 4 * 2 * 5)   # r = 2


@pytest.mark.points(1, exercise="11.1")
def test_topk_pays_only_below_one_over_n(exercise):
    """All-gathered top-k beats the fp32 ring only when ratio < 1/N: its bytes grow with N."""
    n, numel = 16, 1 << 20
    dense = exercise.wire_bytes("none", numel, n)
    assert exercise.wire_bytes("topk", numel, n, ratio=0.5 / n) < dense < exercise.wire_bytes("topk", numel, n, ratio=2 / n)
    assert exercise.wire_bytes("none", numel, 1) == 0


@pytest.mark.points(1, exercise="11.1")
@pytest.mark.parametrize("args", [("gzip", 100, 4), ("powersgd", 100, 4)])
def test_wire_bytes_rejects(exercise, args):
    with pytest.raises(ValueError):
        exercise.wire_bytes(*args)


# Exercise 11.2: topk_error_feedback ---------------------------------------------------------------------

@pytest.mark.points(2, exercise="11.2")
def test_topk_picks_largest_and_conserves(exercise):
    g = torch.Generator().manual_seed(112)
    for _ in range(10):
        grad, residual = torch.randn(200, generator=g, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64)
        before = (grad.clone(), residual.clone())
        idx, values, new_res = exercise.topk_error_feedback(grad, residual, 17)
        e = grad + residual
        assert sorted(idx.tolist()) == sorted(torch.argsort(e.abs(), descending=True)[:17].tolist())
        assert torch.equal(values, e[idx])
        rebuilt = new_res.clone()
        rebuilt[idx] += values
        assert torch.equal(rebuilt, e), "sent + residual must equal gradient + old residual"
        assert (new_res[idx] == 0).all()
        assert torch.equal(grad, before[0]) and torch.equal(residual, before[1]), "inputs modified"


@pytest.mark.points(1, exercise="11.2")
def test_topk_error_feedback_delivers_everything(exercise):
    """A constant gradient, k = 1 of 10 entries: over many steps every coordinate gets its share through."""
    grad = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    residual, delivered = torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    steps = 1000
    for _ in range(steps):
        idx, values, residual = exercise.topk_error_feedback(grad, residual, 1)
        delivered[idx] += values
    assert torch.allclose(delivered + residual, steps * grad)
    assert (delivered / (steps * grad)).min() > 0.9, "without error feedback small entries would never be sent"
    assert residual.abs().max() < 10 * grad.sum(), "the residual stays bounded"


# Exercise 11.3: powersgd_step ---------------------------------------------------------------------------

@pytest.mark.points(2, exercise="11.3")
def test_powersgd_exact_on_low_rank(exercise):
    g = torch.Generator().manual_seed(113)
    m = torch.randn(30, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 20, generator=g, dtype=torch.float64)
    p, q, approx = exercise.powersgd_step(m, torch.randn(20, 3, generator=g, dtype=torch.float64))
    assert p.shape == (30, 3) and q.shape == (20, 3)
    assert torch.allclose(p.t() @ p, torch.eye(3, dtype=torch.float64), atol=1e-10), "P's columns orthonormal"
    assert torch.allclose(approx, m, atol=1e-9)


@pytest.mark.points(2, exercise="11.3")
def test_powersgd_converges_to_best_rank_r(exercise):
    """Repeated warm-started steps approach the truncated SVD's error (Eckart-Young)."""
    g = torch.Generator().manual_seed(1131)
    u = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(25, 25, generator=g, dtype=torch.float64)).Q
    s = torch.tensor([10.0, 6.0, 3.0] + [0.5 ** i for i in range(22)], dtype=torch.float64)
    m = u[:, :25] @ torch.diag(s) @ v.t()
    q = torch.randn(25, 2, generator=g, dtype=torch.float64)
    for _ in range(30):
        _, q, approx = exercise.powersgd_step(m, q)
    best = torch.sqrt((s[2:] ** 2).sum())
    assert torch.linalg.norm(m - approx) == pytest.approx(float(best), rel=1e-6)


# Exercise 11.4: topk_all_reduce on 2 gloo ranks ---------------------------------------------------------

@pytest.fixture(scope="module")
def topk_runs(exercise):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_communication_compression as workers

    from llama_course.core.testing import spawn

    return workers, spawn(workers.check_topk_all_reduce, 2, exercise.__name__, timeout=90)


def _oracle(workers, world):
    """Each rank's top-k with error feedback, averaged densely: what the all-reduce must return."""
    residuals = [torch.zeros(workers.NUMEL, dtype=torch.float64) for _ in range(world)]
    averages, kept = [], []
    for step in range(workers.STEPS):
        dense = torch.zeros(workers.NUMEL, dtype=torch.float64)
        for r in range(world):
            e = workers.local_grad(step, r) + residuals[r]
            idx = torch.argsort(e.abs(), descending=True)[:workers.K]
            dense[idx] += e[idx]
            e[idx] = 0
            residuals[r] = e
        averages.append(dense / world)
        kept.append([x.clone() for x in residuals])
    return averages, kept


@pytest.mark.points(3, exercise="11.4")
def test_topk_all_reduce_averages_the_sparse_gradients(topk_runs):
    workers, results = topk_runs
    averages, _ = _oracle(workers, len(results))
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step, (got, want) in enumerate(zip(out["averages"], averages)):
            assert torch.allclose(got, want, atol=1e-12), f"rank {rank}, step {step + 1}"


@pytest.mark.points(2, exercise="11.4")
def test_topk_all_reduce_sends_only_the_top_k(topk_runs):
    """Recorded on the wire: each rank hands its k values and k indices to the collectives (at most 8 bytes
    each), far below the dense gradient's bytes. Top-k followed by a dense all-reduce saves nothing."""
    workers, results = topk_runs
    dense = workers.NUMEL * 8
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step, wire in enumerate(out["wire"]):
            total = sum(wire["bytes"].values())
            assert 0 < total <= workers.K * 16, \
                f"rank {rank}, step {step + 1}: {total} bytes on the wire ({wire['bytes']}) for k = {workers.K} " \
                f"entries; the dense gradient is {dense} bytes: top-k must send only its k values and indices"


@pytest.mark.points(2, exercise="11.4")
def test_topk_all_reduce_keeps_its_residual(topk_runs):
    workers, results = topk_runs
    _, kept = _oracle(workers, len(results))
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step in range(workers.STEPS):
            assert torch.allclose(out["residuals"][step], kept[step][rank], atol=1e-12), f"rank {rank}, step {step + 1}"
