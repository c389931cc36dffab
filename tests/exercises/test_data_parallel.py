"""Graded tests for the data_parallel exercises (labs/exercises/data_parallel.py), points per test case.

Checked against the ZeRO paper's formulas written here, a direct event computation, and (3.4) a single
process running torch.optim.SGD on the mean gradient.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

PSI = 6.738e9


# Exercise 3.1: zero_memory_per_gpu ----------------------------------------------------------------------

@pytest.mark.points(2, exercise="3.1")
@pytest.mark.parametrize("stage,per", [(0, (2, 2, 12)), (1, (2, 2, 12 / 64)), (2, (2, 2 / 64, 12 / 64)),
                                       (3, (2 / 64, 2 / 64, 12 / 64))])
def test_zero_memory_stages(exercise, stage, per):
    got = exercise.zero_memory_per_gpu(PSI, 64, stage)
    for key, bytes_per in zip(("params", "grads", "optimizer"), per):
        assert got[key] == pytest.approx(bytes_per * PSI)
    assert got["total"] == pytest.approx(sum(per) * PSI)


@pytest.mark.points(1, exercise="3.1")
def test_zero_memory_paper_figure(exercise):
    """ZeRO paper, Figure 1: Psi = 7.5B, N = 64, K = 12: 120 GB, 31.4 GB, 16.6 GB, 1.88 GB."""
    expected = [120e9, 31.4e9, 16.6e9, 1.875e9]
    got = [exercise.zero_memory_per_gpu(7.5e9, 64, s)["total"] for s in range(4)]
    assert got == pytest.approx(expected, rel=5e-3)           # the figure rounds to 3 digits


@pytest.mark.points(1, exercise="3.1")
@pytest.mark.parametrize("args", [(1e9, 8, 4), (1e9, 0, 1), (1e9, 8, -1)])
def test_zero_memory_rejects(exercise, args):
    with pytest.raises(ValueError):
        exercise.zero_memory_per_gpu(*args)


# Exercise 3.2: dp_bytes_per_step ------------------------------------------------------------------------

@pytest.mark.points(2, exercise="3.2")
def test_dp_bytes_per_step(exercise):
    rng = random.Random(32)
    for _ in range(30):
        n, dp, stage, e = rng.uniform(1e6, 1e11), rng.choice([1, 2, 8, 64, 1024]), rng.randrange(4), rng.choice([2, 4])
        factor = 3 if stage == 3 else 2
        assert exercise.dp_bytes_per_step(n, dp, stage, e) == pytest.approx(factor * (dp - 1) / dp * n * e)


@pytest.mark.points(1, exercise="3.2")
def test_zero3_costs_one_and_a_half_all_reduces(exercise):
    assert exercise.dp_bytes_per_step(1e9, 8, 3) / exercise.dp_bytes_per_step(1e9, 8, 0) == pytest.approx(1.5)
    assert exercise.dp_bytes_per_step(1e9, 8, 1) == pytest.approx(exercise.dp_bytes_per_step(1e9, 8, 0))
    assert exercise.dp_bytes_per_step(1e9, 1, 3) == 0


# Exercise 3.3: bucketed_step_time -----------------------------------------------------------------------

def _events(forward, backward, comm, overlap):
    """Walk the two streams event by event."""
    compute_end = forward + sum(backward)
    clock_compute, free_at, end = forward, 0.0, compute_end
    for b, c in zip(backward, comm):
        clock_compute += b
        start = max(clock_compute if overlap else compute_end, free_at)
        free_at = start + c
        end = max(end, free_at)
    return end


@pytest.mark.points(1, exercise="3.3")
def test_bucketed_small_cases(exercise):
    # comm hidden except the last bucket's: 1 + 3 + 0.5
    assert exercise.bucketed_step_time(1.0, [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]) == pytest.approx(4.5)
    assert exercise.bucketed_step_time(1.0, [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], overlap=False) == pytest.approx(5.5)
    # comm-bound: the stream is busy from the first bucket on: 1 + 1 + 3 x 2
    assert exercise.bucketed_step_time(1.0, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == pytest.approx(8.0)


@pytest.mark.points(2, exercise="3.3")
def test_bucketed_random(exercise):
    rng = random.Random(33)
    for _ in range(50):
        k = rng.randrange(1, 12)
        fwd, bwd, comm = rng.uniform(0, 2), [rng.uniform(0, 1) for _ in range(k)], [rng.uniform(0, 1) for _ in range(k)]
        for overlap in (True, False):
            assert exercise.bucketed_step_time(fwd, bwd, comm, overlap) == pytest.approx(_events(fwd, bwd, comm, overlap))


@pytest.mark.points(1, exercise="3.3")
def test_bucketed_rejects_mismatch(exercise):
    with pytest.raises(ValueError):
        exercise.bucketed_step_time(1.0, [1.0, 1.0], [1.0])


# Exercise 3.4: zero2_sgd_step on 2 gloo ranks -----------------------------------------------------------

@pytest.fixture(scope="module")
def zero2(exercise):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_data_parallel as workers

    from llama_course.core.testing import spawn

    return workers, spawn(workers.check_zero2, 2, exercise.__name__, timeout=90)


def _reference(workers, world):
    import torch

    param = torch.nn.Parameter(workers.initial_param())
    opt = torch.optim.SGD([param], lr=workers.LR, momentum=workers.MOMENTUM)
    params = []
    for step in range(workers.STEPS):
        param.grad = sum(workers.local_grad(step, r) for r in range(world)) / world
        opt.step()
        params.append(param.detach().clone())
    return params, opt.state[param]["momentum_buffer"].clone()


@pytest.mark.points(4, exercise="3.4")
def test_zero2_matches_single_process_sgd(zero2):
    import torch

    workers, results = zero2
    expected, _ = _reference(workers, len(results))
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step, (got, want) in enumerate(zip(out["params"], expected)):
            assert torch.allclose(got, want, atol=1e-10), f"rank {rank}, step {step + 1}: params differ from SGD"


@pytest.mark.points(2, exercise="3.4")
def test_zero2_keeps_only_its_momentum_shard(zero2):
    import torch

    workers, results = zero2
    _, momentum = _reference(workers, len(results))
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        want = torch.tensor_split(momentum, len(results))[rank]
        assert out["momentum"].shape == want.shape and torch.allclose(out["momentum"], want, atol=1e-10)


@pytest.mark.points(2, exercise="3.4")
def test_zero2_reduce_scatters_on_the_wire(zero2):
    """Per step and rank: a reduce-scatter handed the whole gradient, an all-gather handed one shard, and no
    all-reduce (all-reduce then slice is ZeRO-1's traffic: 2x the gradient's bytes)."""
    workers, results = zero2
    n, grad_bytes = len(results), workers.NUMEL * 8
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step, wire in enumerate(out["wire"]):
            got = {k: v for k, v in wire["bytes"].items() if v}
            assert got == {"reduce_scatter": grad_bytes, "all_gather": grad_bytes // n}, \
                f"rank {rank}, step {step + 1}: bytes on the wire {got}; ZeRO-2 reduce-scatters the " \
                f"{grad_bytes}-byte gradient and all-gathers a {grad_bytes // n}-byte shard"


# Exercise 3.5: adamw_step -------------------------------------------------------------------------------

@pytest.mark.points(3, exercise="3.5")
@pytest.mark.parametrize("betas,wd", [((0.9, 0.95), 0.1), ((0.8, 0.999), 0.0)])
def test_adamw_step_matches_torch(exercise, betas, wd):
    import torch

    g = torch.Generator().manual_seed(35)
    ref = torch.nn.Parameter(torch.randn(7, 5, generator=g, dtype=torch.float64))
    opt = torch.optim.AdamW([ref], lr=1e-2, betas=betas, eps=1e-8, weight_decay=wd)
    mine = ref.detach().clone()
    m, v = torch.zeros_like(mine), torch.zeros_like(mine)
    for step in range(1, 6):
        grad = torch.randn(7, 5, generator=g, dtype=torch.float64)
        ref.grad = grad.clone()
        opt.step()
        exercise.adamw_step(mine, grad, m, v, step, 1e-2, betas, 1e-8, wd)
        assert torch.allclose(mine, ref.detach(), atol=1e-12), f"step {step}"
    assert torch.allclose(m, opt.state[ref]["exp_avg"]) and torch.allclose(v, opt.state[ref]["exp_avg_sq"])
