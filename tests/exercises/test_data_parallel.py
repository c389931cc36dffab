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


@pytest.mark.points(1, exercise="3.1")
@pytest.mark.parametrize("stage", range(4))
def test_zero_memory_one_rank(exercise, stage):
    """dp = 1 is a valid group of one: nothing to shard over, 2 + 2 + 12 = 16 bytes per parameter."""
    assert exercise.zero_memory_per_gpu(PSI, 1, stage)["total"] == pytest.approx(16 * PSI)


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


@pytest.mark.points(1, exercise="3.2")
@pytest.mark.parametrize("args", [(1e9, 8, 4), (1e9, 0, 1), (1e9, -2, 0), (1e9, 8, -1)])
def test_dp_bytes_rejects(exercise, args):
    """A stage outside 0-3 or dp < 1 (each alone, the other argument valid) is a ValueError."""
    with pytest.raises(ValueError):
        exercise.dp_bytes_per_step(*args)


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


# Exercise 3.6: BucketedDDP on 2 gloo ranks -------------------------------------------------------------

@pytest.fixture(scope="module")
def bucketed(exercise):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_data_parallel as workers

    from llama_course.core.testing import spawn

    return workers, spawn(workers.check_bucketed_ddp, 2, exercise.__name__, timeout=120)


def _ddp_reference(workers):
    """One process, rank 0's initial weights, the whole batch: the parameters after each SGD step."""
    import torch

    model = workers.ddp_model(seed=0)
    initial = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=workers.DDP_LR)
    params = []
    for step in range(workers.DDP_STEPS):
        x, y = workers.ddp_batch(step)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        params.append([p.detach().clone() for p in model.parameters()])
    return initial, params


@pytest.mark.points(4, exercise="3.6")
def test_bucketed_ddp_matches_one_process(bucketed):
    """Replicas start from rank 0's weights (each rank built its model from another seed) and follow one
    process training on the whole batch, step by step."""
    import torch

    workers, results = bucketed
    initial, expected = _ddp_reference(workers)
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert all(torch.equal(a, b) for a, b in zip(out["initial"], initial)), \
            f"rank {rank}: the replicas must start from rank 0's parameters (broadcast them)"
        for step, (got, want) in enumerate(zip(out["params"], expected)):
            for a, b in zip(got, want):
                assert torch.allclose(a, b, atol=1e-6), f"rank {rank}, step {step + 1}: parameters differ from one process"


@pytest.mark.points(2, exercise="3.6")
def test_bucketed_ddp_all_reduces_buckets(bucketed):
    """Recorded per step: one all-reduce per bucket of the sizes the bucketing rule gives (336, 1088 and 512
    bytes for a 1088-byte limit: the second bucket reaches the limit exactly, which does not take it past,
    so w2 and b1 stay together), not one per parameter, not one for everything."""
    workers, results = bucketed
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step, wire in enumerate(out["wire"]):
            sizes = sorted(n for kind, _, _, n, _ in wire["calls"] if kind == "all_reduce")
            assert sizes == [336, 512, 1088], f"rank {rank}, step {step + 1}: all-reduces of {sizes} bytes"
            assert {k for k, b in wire["bytes"].items() if b} == {"all_reduce"}, f"rank {rank}: {wire['bytes']}"


@pytest.mark.points(2, exercise="3.6")
def test_bucketed_ddp_overlaps_the_backward(bucketed):
    """When the first layer's weight gradient appears (the end of the backward), the two buckets that were
    complete before it are already on the wire, launched with async_op=True: communication overlaps the
    rest of the backward instead of waiting for finish_gradient_synchronization."""
    workers, results = bucketed
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for step in range(workers.DDP_STEPS):
            seen = out["before_first_weight"][step]
            assert seen and seen[0] >= 2, \
                f"rank {rank}, step {step + 1}: {seen[0] if seen else 0} all-reduces launched before the " \
                "backward reached the first layer; launch each bucket from the gradient hooks as it fills"
            assert out["async"][step] and all(out["async"][step]), \
                f"rank {rank}, step {step + 1}: all-reduces must be asynchronous (async_op=True)"


# Exercise 3.7: fsdp_forward_backward on 2 gloo ranks ---------------------------------------------------

@pytest.fixture(scope="module")
def fsdp(exercise):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_data_parallel as workers

    from llama_course.core.testing import spawn

    return workers, spawn(workers.check_fsdp, 2, exercise.__name__, timeout=120)


def _fsdp_reference(workers, world):
    """Each rank's loss and the global-mean gradient of every layer's padded flat parameters (one process)."""
    import torch

    flats = [f.clone().requires_grad_() for f in workers.fsdp_flat_params(world)]
    losses, grads = [], [torch.zeros_like(f) for f in flats]
    for rank in range(world):
        x, target = workers.fsdp_data(rank)
        h = x
        for flat, shape in zip(flats, workers.FSDP_SHAPES):
            h = workers.apply_layer(flat, shape, h)
        loss = ((h - target) ** 2).mean()
        losses.append(float(loss))
        for g, d in zip(grads, torch.autograd.grad(loss, flats)):
            g += d / world
    return losses, grads


@pytest.mark.points(4, exercise="3.7")
def test_fsdp_matches_one_process(fsdp):
    import torch

    workers, results = fsdp
    losses, grads = _fsdp_reference(workers, len(results))
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["loss"] == pytest.approx(losses[rank], rel=1e-5), f"rank {rank}: loss"
        for i, (got, full) in enumerate(zip(out["grads"], grads)):
            want = full.chunk(len(results))[rank]
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6), \
                f"rank {rank}, layer {i}: gradient shard differs from one process's mean gradient"


@pytest.mark.points(2, exercise="3.7")
def test_fsdp_frees_what_it_gathered(fsdp):
    """Each layer is gathered once for the forward and once for the backward (recomputed), and when a gather
    is issued at most one other gathered buffer is still alive: the layer running now (its successor is
    the one being gathered). Keeping the layers gathered, or a forward graph that holds them, fails."""
    workers, results = fsdp
    layers = len(workers.FSDP_SHAPES)
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        gathers = [e for e in out["events"] if e[0] == "gather"]
        computes = [e for e in out["events"] if e[0] == "compute"]
        assert len(gathers) == 2 * layers, f"rank {rank}: {len(gathers)} all-gathers, expected {2 * layers}"
        assert len(computes) == 2 * layers, \
            f"rank {rank}: apply_layer ran {len(computes)} times; run each layer with it, forward and recompute"
        held = [e[2] for e in gathers]
        assert max(held) <= 1, f"rank {rank}: gathered buffers alive at each gather {held}: free each layer"


@pytest.mark.points(2, exercise="3.7")
def test_fsdp_prefetches_the_next_layer(fsdp):
    """The gather of the next layer is issued before the current layer runs, forward and backward: its
    communication overlaps this layer's compute."""
    workers, results = fsdp
    layers = len(workers.FSDP_SHAPES)
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        events = out["events"]
        gather_at = [i for i, e in enumerate(events) if e[0] == "gather"]
        compute_at = [i for i, e in enumerate(events) if e[0] == "compute"]
        assert len(gather_at) == len(compute_at) == 2 * layers, f"rank {rank}: {events}"
        for k in range(2 * layers - 1):
            if k == layers - 1:
                continue                           # the forward's last layer: the backward starts over
            assert gather_at[k + 1] < compute_at[k], \
                f"rank {rank}: layer run {k} started before the next gather was issued (no prefetch)"


@pytest.mark.points(2, exercise="3.7")
def test_fsdp_wire(fsdp):
    """Recorded: 2 all-gathers per layer handed one shard each, one reduce-scatter per layer handed the
    whole padded flat gradient, nothing else (an all-reduce of the gradient is ZeRO-1/2's traffic)."""
    workers, results = fsdp
    world = len(results)
    flats = workers.fsdp_flat_params(world)
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        calls = out["wire"]["calls"]
        gathers = sorted(n for kind, _, _, n, _ in calls if kind == "all_gather")
        scatters = sorted(n for kind, _, _, n, _ in calls if kind == "reduce_scatter")
        assert gathers == sorted(2 * [f.numel() * 4 // world for f in flats]), f"rank {rank}: all-gathers {gathers}"
        assert scatters == sorted(f.numel() * 4 for f in flats), f"rank {rank}: reduce-scatters {scatters}"
        assert {k for k, b in out["wire"]["bytes"].items() if b} == {"all_gather", "reduce_scatter"}, \
            f"rank {rank}: {out['wire']['bytes']}"


# Exercise 3.8: clip_grad_norm_sharded on 2 gloo ranks --------------------------------------------------

MAX_NORM = 1.0


@pytest.fixture(scope="module")
def clipped(exercise):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_data_parallel as workers

    from llama_course.core.testing import spawn

    return workers, spawn(workers.check_clip, 2, exercise.__name__, MAX_NORM, timeout=90)


@pytest.mark.points(3, exercise="3.8")
def test_clip_grad_norm_sharded_matches_torch(clipped):
    """Against torch.nn.utils.clip_grad_norm_ on the whole gradients in one process: the same total norm on
    every rank, and each shard scaled as the whole would be (case 0 is clipped, case 1 is not)."""
    import torch

    workers, results = clipped
    world = len(results)
    for case in (0, 1):
        full = [torch.nn.Parameter(torch.zeros_like(g)) for g in workers.clip_full_grads(case)]
        for p, g in zip(full, workers.clip_full_grads(case)):
            p.grad = g.clone()
        norm = float(torch.nn.utils.clip_grad_norm_(full, MAX_NORM))
        for rank, out in enumerate(results):
            assert not out["error"], f"rank {rank}: {out['error']}"
            assert out["norms"][case] == pytest.approx(norm, rel=1e-5), f"rank {rank}, case {case}: total norm"
            for got, p in zip(out["shards"][case], full):
                want = p.grad.reshape(-1).tensor_split(world)[rank]
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), f"rank {rank}, case {case}: clipped shard"


@pytest.mark.points(1, exercise="3.8")
def test_clip_grad_norm_sharded_sends_one_number(clipped):
    """Recorded: one all-reduce of a single number (the sum of squares), not the gradients."""
    _, results = clipped
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        for case, wire in enumerate(out["wire"]):
            sizes = [n for kind, _, _, n, _ in wire["calls"]]
            assert len(sizes) == 1 and wire["bytes"]["all_reduce"] == sizes[0] <= 8, \
                f"rank {rank}, case {case}: {wire['calls']}; one all-reduce of one number suffices"
