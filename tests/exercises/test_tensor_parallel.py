"""Graded tests for the tensor-parallel exercises (labs/exercises/tensor_parallel.py), points per test.

Closed forms written here and unsplit torch layers as oracles; exercise 4.5 runs on 2 gloo processes
against torch's cross-entropy on the full logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))      # the spawned workers import these by name

# Exercise 4.1: tp_block_comm_bytes -----------------------------------------------------------------------


@pytest.mark.points(2, exercise="4.1")
@pytest.mark.parametrize("b,s,h,t,e", [(1, 2048, 4096, 8, 2), (4, 128, 64, 2, 4), (2, 4096, 8192, 4, 2)])
def test_tp_block_comm_bytes(exercise, b, s, h, t, e):
    a = b * s * h * e
    expected = 4 * (2 * (t - 1) / t) * a          # 2 all-reduces forward, 2 backward
    assert exercise.tp_block_comm_bytes(b, s, h, t, e) == pytest.approx(expected)
    assert exercise.tp_block_comm_bytes(b, s, h, t, e, sequence_parallel=True) == pytest.approx(expected)


@pytest.mark.points(1, exercise="4.1")
def test_tp_block_comm_bytes_limits(exercise):
    assert exercise.tp_block_comm_bytes(1, 2048, 4096, 1) == 0
    with pytest.raises(ValueError):
        exercise.tp_block_comm_bytes(1, 2048, 4096, 0)


# Exercises 4.2 and 4.3: column- and row-parallel linear -------------------------------------------------

@pytest.mark.points(2, exercise="4.2")
@pytest.mark.parametrize("t", [1, 2, 4])
def test_column_parallel_linear(exercise, t):
    g = torch.Generator().manual_seed(t)
    x, w = torch.randn(3, 5, 8, generator=g), torch.randn(12, 8, generator=g)
    full = x @ w.T
    parts = [exercise.column_parallel_linear(x, w, r, t) for r in range(t)]
    assert all(p.shape == (3, 5, 12 // t) for p in parts)
    torch.testing.assert_close(torch.cat(parts, -1), full)


@pytest.mark.points(2, exercise="4.3")
@pytest.mark.parametrize("t", [1, 2, 4])
def test_megatron_mlp(exercise, t):
    """SwiGLU split the Megatron way: w1, w3 by columns, w2 by rows; the sum of the ranks' outputs is the
    unsplit MLP, and no communication happens before that sum."""
    g = torch.Generator().manual_seed(10 + t)
    x = torch.randn(2, 7, 16, generator=g)
    w1, w3, w2 = torch.randn(24, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(16, 24, generator=g)
    full = (torch.nn.functional.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
    partial = []
    for r in range(t):
        hidden = (torch.nn.functional.silu(exercise.column_parallel_linear(x, w1, r, t))
                  * exercise.column_parallel_linear(x, w3, r, t))
        partial.append(exercise.row_parallel_linear(hidden, w2, r, t))
    assert all(p.shape == full.shape for p in partial)
    torch.testing.assert_close(sum(partial), full, rtol=1e-4, atol=1e-4)


@pytest.mark.points(1, exercise="4.2")
def test_column_split_rejects_uneven(exercise):
    """6 output features do not split over 4 ranks (the input features, 4, would: split the right ones)."""
    with pytest.raises(ValueError):
        exercise.column_parallel_linear(torch.ones(2, 4), torch.ones(6, 4), 0, 4)


@pytest.mark.points(1, exercise="4.3")
def test_split_rejects_uneven(exercise):
    with pytest.raises(ValueError):
        exercise.row_parallel_linear(torch.ones(2, 2), torch.ones(4, 6), 0, 4)


# Exercise 4.4: tp_activation_bytes -----------------------------------------------------------------------

@pytest.mark.points(2, exercise="4.4")
@pytest.mark.parametrize("s,b,h,a,t", [(2048, 1, 12288, 96, 8), (4096, 2, 8192, 64, 4), (2048, 4, 4096, 32, 2)])
def test_tp_activation_bytes(exercise, s, b, h, a, t):
    sbh = s * b * h
    assert exercise.tp_activation_bytes(s, b, h, a) == pytest.approx(sbh * (34 + 5 * a * s / h))
    assert exercise.tp_activation_bytes(s, b, h, a, t) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert exercise.tp_activation_bytes(s, b, h, a, t, True) == pytest.approx(sbh / t * (34 + 5 * a * s / h))


@pytest.mark.points(1, exercise="4.4")
def test_sequence_parallel_divides_everything(exercise):
    """With SP every term is split: exactly 1/t of the unsplit layer; without, 10 s b h stays whole."""
    s, b, h, a = 2048, 1, 12288, 96
    whole = exercise.tp_activation_bytes(s, b, h, a)
    for t in (2, 4, 8):
        assert exercise.tp_activation_bytes(s, b, h, a, t, True) == pytest.approx(whole / t)
        assert exercise.tp_activation_bytes(s, b, h, a, t) - whole / t == pytest.approx(10 * s * b * h * (1 - 1 / t))


# Exercise 4.5: vocab_parallel_cross_entropy (2 gloo processes) ------------------------------------------

@pytest.fixture(scope="module")
def vocab_ce(impl):
    from workers_tensor_parallel import vocab_ce_worker

    from llama_course.core.testing import spawn

    return spawn(vocab_ce_worker, 2, impl, timeout=90)


@pytest.mark.points(3, exercise="4.5")
def test_vocab_parallel_cross_entropy_loss(vocab_ce):
    for rank, cases in enumerate(vocab_ce):
        for case, r in enumerate(cases):
            assert r["finite"], f"rank {rank} case {case}: non-finite loss (subtract the max?)"
            assert r["loss_diff"] < 1e-4, f"rank {rank} case {case}: loss off by {r['loss_diff']}"


@pytest.mark.points(2, exercise="4.5")
def test_vocab_parallel_cross_entropy_sends_n_numbers(vocab_ce):
    """Recorded on the wire: all-reduces of N numbers per token statistic (three suffice; up to three of
    float64 allowed), never anything of the logits' size (an all-reduce of zero-padded full logits gathers
    them by another name)."""
    for rank, cases in enumerate(vocab_ce):
        for case, r in enumerate(cases):
            used = {k for k, b in r["wire"]["bytes"].items() if b}
            assert used <= {"all_reduce"}, f"rank {rank} case {case}: {sorted(used)} on the wire, all-reduce only"
            total = r["wire"]["bytes"]["all_reduce"]
            assert total <= 3 * r["n"] * 8, \
                f"rank {rank} case {case}: {total} bytes all-reduced for {r['n']} tokens; the logits are " \
                f"{r['n'] * r['vocab'] * 4} bytes: send per-token numbers, not logits"


@pytest.mark.points(2, exercise="4.5")
def test_vocab_parallel_cross_entropy_gradient(vocab_ce):
    for rank, cases in enumerate(vocab_ce):
        for case, r in enumerate(cases):
            assert r["grad_diff"] < 1e-5, f"rank {rank} case {case}: gradient off by {r['grad_diff']}"


# Exercises 4.6 and 4.7: f, g and the Megatron MLP (2 gloo processes) ---------------------------------------

@pytest.fixture(scope="module")
def fg(impl):
    from workers_tensor_parallel import fg_worker

    from llama_course.core.testing import spawn

    return spawn(fg_worker, 2, impl, timeout=90)


def _all_reduces(summary) -> list:
    return [n for kind, _, _, n, _ in summary["calls"] if kind == "all_reduce"]


@pytest.mark.points(2, exercise="4.6")
def test_f_is_identity_forward_all_reduce_backward(fg):
    for rank, out in enumerate(fg):
        assert not out["error"], f"rank {rank}: {out['error']}"
        f = out["f"]
        assert f["forward_same"], f"rank {rank}: f must return its input unchanged"
        assert f["grad_diff"] < 1e-5, f"rank {rank}: d/dx must be the sum of every rank's gradient ({f['grad_diff']})"
        assert _all_reduces(f["forward"]) == [], f"rank {rank}: f's forward sends nothing"
        assert _all_reduces(f["backward"]) == [3 * 4 * 8 * 4], f"rank {rank}: f's backward: one all-reduce"


@pytest.mark.points(2, exercise="4.6")
def test_g_is_all_reduce_forward_identity_backward(fg):
    for rank, out in enumerate(fg):
        assert not out["error"], f"rank {rank}: {out['error']}"
        g = out["g"]
        assert g["forward_diff"] < 1e-5, f"rank {rank}: g must return the sum over ranks"
        assert g["input_kept"], f"rank {rank}: g modified its input in place"
        assert g["grad_diff"] < 1e-6, f"rank {rank}: g's backward is the identity ({g['grad_diff']})"
        assert _all_reduces(g["forward"]) == [3 * 4 * 8 * 4], f"rank {rank}: g's forward: one all-reduce"
        assert _all_reduces(g["backward"]) == [], f"rank {rank}: g's backward sends nothing"


@pytest.mark.points(3, exercise="4.7")
def test_tp_mlp_matches_the_unsplit_mlp(fg):
    for rank, out in enumerate(fg):
        assert not out["error"], f"rank {rank}: {out['error']}"
        m = out["mlp"]
        assert m["y_diff"] < 1e-4, f"rank {rank}: output off by {m['y_diff']}"
        assert m["x_grad_diff"] < 1e-4, f"rank {rank}: d/dx off by {m['x_grad_diff']}"
        assert m["w1_grad_diff"] < 1e-4 and m["w2_grad_diff"] < 1e-4, \
            f"rank {rank}: weight-shard gradients off by {m['w1_grad_diff']}, {m['w2_grad_diff']}"


@pytest.mark.points(2, exercise="4.7")
def test_tp_mlp_one_all_reduce_each_way(fg):
    """Recorded: the forward all-reduces the output once (g), the backward the input's gradient once (f)."""
    for rank, out in enumerate(fg):
        assert not out["error"], f"rank {rank}: {out['error']}"
        m = out["mlp"]
        assert _all_reduces(m["forward"]) == [m["bytes"]] and _all_reduces(m["backward"]) == [m["bytes"]], \
            f"rank {rank}: forward {_all_reduces(m['forward'])}, backward {_all_reduces(m['backward'])} bytes"
        for summary in (m["forward"], m["backward"]):
            assert {k for k, b in summary["bytes"].items() if b} == {"all_reduce"}
