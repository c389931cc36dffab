"""Graded tests for the model-compression exercises (labs/exercises/model_compression.py), points per test.

Error bounds, exact counts and closed forms written here (the distillation loss against torch's own
softmax, log and cross-entropy); exercise 12.5 on 2 gloo processes (one launch).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")


# Exercise 12.1: quantize_int8 -------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="12.1")
def test_quantize_int8_error_bound(exercise):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 48, generator=g) * torch.logspace(-3, 1, 16).unsqueeze(1)
    q, s = exercise.quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and tuple(s.shape) == (16, 1)
    assert int(q.abs().max()) <= 127
    assert torch.allclose(s.flatten().float(), w.abs().amax(1) / 127, rtol=1e-6)
    assert bool(((q.float() * s - w).abs() <= s / 2 * (1 + 1e-6)).all())
    assert bool((q.abs().amax(1) == 127).all()), "the largest weight of each row maps to +-127"


@pytest.mark.points(1, exercise="12.1")
def test_quantize_int8_zero_row_and_shape(exercise):
    w = torch.zeros(3, 4)
    w[1] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    q, s = exercise.quantize_int8(w)
    assert bool((q[0] == 0).all()) and torch.isfinite(s).all() and bool((s > 0).all())
    assert q[1].tolist() == [64, -127, 32, 0]                    # round(127 x w / 2)
    with pytest.raises(ValueError):
        exercise.quantize_int8(torch.ones(4))


# Exercise 12.2: magnitude_prune -----------------------------------------------------------------------------

@pytest.mark.points(2, exercise="12.2")
def test_magnitude_prune_exact_count_and_largest_kept(exercise):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 30, generator=g)
    before = w.clone()
    for s in (0.0, 0.1, 0.5, 0.9, 1.0):
        p = exercise.magnitude_prune(w, s)
        k = round(s * w.numel())
        assert p.shape == w.shape and int((p == 0).sum()) == k
        kept = p != 0
        assert bool((p[kept] == w[kept]).all())
        if 0 < k < w.numel():
            assert float(w[kept].abs().min()) >= float(w[~kept].abs().max())
    assert torch.equal(w, before), "w was modified"


@pytest.mark.points(1, exercise="12.2")
def test_magnitude_prune_ties(exercise):
    w = torch.ones(10)
    assert int((exercise.magnitude_prune(w, 0.3) == 0).sum()) == 3
    with pytest.raises(ValueError):
        exercise.magnitude_prune(w, 1.5)
    with pytest.raises(ValueError):
        exercise.magnitude_prune(w, -0.1)


# Exercise 12.3: distillation_loss ---------------------------------------------------------------------------

def _reference(s, t, y, T, a):
    s, t = s.reshape(-1, s.shape[-1]).double(), t.reshape(-1, t.shape[-1]).double()
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()
    ce = -torch.log_softmax(s, -1).gather(1, y.reshape(-1, 1)).mean()
    return a * T * T * kl + (1 - a) * ce


@pytest.mark.points(2, exercise="12.3")
@pytest.mark.parametrize("T,a", [(1.0, 0.0), (2.0, 0.5), (4.0, 0.9), (0.5, 1.0)])
def test_distillation_loss_closed_form(exercise, T, a):
    g = torch.Generator().manual_seed(int(10 * T))
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g) * 3
    y = torch.randint(0, 11, (2, 5), generator=g)
    got = exercise.distillation_loss(s, t, y, T, a)
    assert got.dim() == 0
    assert float(got) == pytest.approx(float(_reference(s, t, y, T, a)), rel=1e-5, abs=1e-6)


@pytest.mark.points(1, exercise="12.3")
def test_distillation_loss_zero_when_student_is_teacher(exercise):
    z = torch.randn(4, 7)
    assert float(exercise.distillation_loss(z, z.clone(), torch.zeros(4, dtype=torch.long), 3.0, 1.0)) == \
        pytest.approx(0.0, abs=1e-6)


# Exercise 12.4: inference_weight_bytes ----------------------------------------------------------------------

@pytest.mark.points(2, exercise="12.4")
def test_inference_weight_bytes(exercise):
    n = 68.98e9                                                    # llama2-70b
    assert exercise.inference_weight_bytes(n, 16) == pytest.approx(2 * n)
    assert exercise.inference_weight_bytes(n, 4, 64) == pytest.approx(n * (0.5 + 2 / 64))
    assert exercise.inference_weight_bytes(n, 8, 8192) == pytest.approx(n * (1 + 2 / 8192))
    assert exercise.inference_weight_bytes(n, 4, 64) / 1e9 == pytest.approx(36.65, abs=0.05)
    assert exercise.inference_weight_bytes(n, 4, 32) > exercise.inference_weight_bytes(n, 4, 128)
    with pytest.raises(ValueError):
        exercise.inference_weight_bytes(n, 3)


# Exercise 12.5: quantized_all_gather on 2 gloo processes ----------------------------------------------------

@pytest.fixture(scope="module")
def gather_results(exercise):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workers_model_compression as workers

    from llama_course.core.testing import spawn

    return spawn(workers.check_quantized_all_gather, 2, exercise.__name__, timeout=90)


@pytest.mark.points(3, exercise="12.5")
def test_quantized_all_gather_within_half_a_step(gather_results):
    for rank, out in enumerate(gather_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["shape"] == (2 * out["rows"], out["cols"])
        assert out["within"], f"rank {rank}: an element is off by more than half a quantization step"
        assert out["max_rel"] < 1 / 127


@pytest.mark.points(1, exercise="12.5")
def test_quantized_all_gather_sends_a_quarter(gather_results):
    for out in gather_results:
        assert not out["error"], out["error"]
        rows, cols = out["rows"], out["cols"]
        assert out["sent"] == rows * cols * 1 + rows * 4               # (n - 1) = 1 shard of int8 + fp32 scales
        assert math.isclose(out["sent"] / (rows * cols * 4), 0.25 + 1 / cols)


@pytest.mark.points(2, exercise="12.5")
def test_quantized_all_gather_gathers_int8_on_the_wire(gather_results):
    """Recorded, not reported: the all-gather is handed int8 values (rows x cols bytes) and float32 scales
    (rows x 4), nothing in float32 of the weight's size. Gathering fp32 and reporting int8 bytes fails."""
    for rank, out in enumerate(gather_results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        rows, cols, wire = out["rows"], out["cols"], out["wire"]
        int8 = [n for kind, _, dtype, n, _ in wire["calls"] if kind == "all_gather" and dtype == "torch.int8"]
        assert sum(int8) == rows * cols, f"rank {rank}: int8 bytes gathered {sum(int8)}, expected {rows * cols}"
        total = sum(wire["bytes"].values())
        assert total == rows * cols + rows * 4, \
            f"rank {rank}: {total} bytes handed to torch.distributed ({wire['bytes']}); int8 values + fp32 " \
            f"scales are {rows * cols + rows * 4}"
        assert out["sent"] == (len(gather_results) - 1) * total, f"rank {rank}: reported {out['sent']} bytes sent"
