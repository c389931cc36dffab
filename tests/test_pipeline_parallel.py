"""Pipeline parallel: GPipe, 1F1B, interleaved 1F1B and zero bubble in the course's send/recv engine and in
torch.distributed.pipelining, against the single-process run (one 2-rank spawn, balanced stages and
activation checkpointing included; zero bubble also against 1F1B, torch's against the course's, and under
tp 2 / dp 2 in one 4-rank spawn); the traced schedules; bad layouts. Spawned ranks run in strict mode
(NCCL's rules on gloo: tests/conftest.py sets LLAMA_COURSE_STRICT=1)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402
from test_tensor_parallel import assert_matches_single_process  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from simulator.config import ConfigError  # noqa: E402
from simulator.pipeline_parallel import schedule_order  # noqa: E402

PP = {"parallel.pp": 2, "cluster.num_gpus": 2}
ZB = {**PP, "parallel.schedule": "zero_bubble"}
CASES = [
    {**PP, "parallel.schedule": "gpipe"},
    {**PP, "parallel.schedule": "1f1b", "parallel.activation_checkpointing": "full"},
    {**PP, "parallel.schedule": "interleaved_1f1b", "parallel.vpp": 2},
    {**PP, "parallel.schedule": "1f1b", "load_balance.policy": "balanced_stages", "model.n_layers": 3},
    {**PP, "parallel.schedule": "gpipe", "parallel.implementation": "torch"},
    {**PP, "parallel.schedule": "1f1b", "parallel.implementation": "torch"},
    {**PP, "parallel.schedule": "interleaved_1f1b", "parallel.vpp": 2, "parallel.implementation": "torch"},
    {**PP, "parallel.schedule": "1f1b"},
    ZB,
    {**ZB, "parallel.activation_checkpointing": "full"},
    {**ZB, "parallel.activation_checkpointing": "selective_op"},
    {**ZB, "parallel.implementation": "torch"},
]
# bf16 autocast: zero bubble against 1F1B (the same products in the same dtype, so the same rounding)
BF16 = [{**PP, "parallel.schedule": s, "training.precision": "bf16"} for s in ("1f1b", "zero_bubble")]
TRACED = [{**PP, "parallel.schedule": "1f1b"}, ZB]


def case(overrides: dict) -> int:
    return (CASES + BF16).index(overrides)


@pytest.fixture(scope="module")
def results():
    return spawn(workers.pipelines, 2, CASES + BF16, TRACED, timeout=300)[0]


def assert_same_run(got: dict, want: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Two layouts' runs on the same data: losses, step-1 gradients and the weights after the last step."""
    assert got["losses"] == pytest.approx(want["losses"], rel=rtol)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=rtol)
    for key in ("grads", "weights"):
        assert set(got[key]) == set(want[key])
        for name, tensor in want[key].items():
            torch.testing.assert_close(got[key][name], tensor, rtol=rtol, atol=atol, msg=f"{key} {name}")


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c) for c in CASES])
def test_schedule_matches_single_process(results, index):
    course = CASES[index].get("parallel.implementation", "course") == "course"
    assert results["layouts"][index]["engine"] == ("pipeline_parallel" if course else "torch_pipeline")
    assert_matches_single_process(results["layouts"][index])


@pytest.mark.parametrize("zero_bubble, one_f_one_b", [
    (ZB, {**PP, "parallel.schedule": "1f1b"}),
    ({**ZB, "parallel.activation_checkpointing": "full"}, CASES[1]),
    (BF16[1], BF16[0]),
], ids=["fp32", "full-recompute", "bf16"])
def test_zero_bubble_matches_1f1b(results, zero_bubble, one_f_one_b):
    """Deferring the weight gradients changes when they are computed, not what: zero bubble's losses,
    gradients and weights equal 1F1B's (fp32 and bf16 autocast) to rtol 1e-5, atol 1e-6."""
    got, want = results["layouts"][case(zero_bubble)], results["layouts"][case(one_f_one_b)]
    assert got["engine"] == want["engine"] == "pipeline_parallel"
    assert_same_run(got, want)


def test_torch_zero_bubble_matches_the_course(results):
    """torch's ScheduleInterleavedZeroBubble (one stage per rank) trains as the course's zero bubble does."""
    got, want = results["layouts"][case({**ZB, "parallel.implementation": "torch"})], results["layouts"][case(ZB)]
    assert got["engine"] == "torch_pipeline" and got["torch_schedule"] == "ScheduleInterleavedZeroBubble"
    assert_same_run(got, want)


TASK = {"forward": "F", "backward": "B", "backward_weight": "W"}


@pytest.mark.parametrize("index", range(len(TRACED)), ids=[t["parallel.schedule"] for t in TRACED])
def test_trace_shows_the_schedule_order_and_its_bubble(results, index):
    """Each rank's compute spans run in schedule_order's order (zero bubble: F, B and W as forward, backward
    and backward_weight); idle time is recorded as bubble spans."""
    schedule = TRACED[index]["parallel.schedule"]
    trace = results["traces"][index]
    for rank, events in enumerate(trace):
        compute = sorted((e for e in events if e["tid"] == "compute" and e["name"] in TASK), key=lambda e: e["ts"])
        order = [(TASK[e["name"]], e["args"]["micro_batch"], e["args"]["chunk"]) for e in compute]
        assert order == schedule_order(schedule, 2, 4, 1, rank)
        names = {e["name"] for e in events}
        assert {"send", "recv", "bubble"} <= names
        bubble = sum(e["dur"] for e in events if e["name"] == "bubble")
        assert bubble > 0
        if schedule == "zero_bubble":         # compute_delay (4 ms, 8 ms) per layer, 2 layers: B and W 8 ms each
            assert all(e["dur"] >= 8000 for e in compute if e["name"] != "forward")
            # every W ran the deferred weight gradients of its stage's matmuls: 7 a layer, and the head
            assert {e["args"]["matmuls"] for e in compute if e["name"] == "backward_weight"} == {2 * 7 + rank}
    # rank 1 (last stage) waits for rank 0's first forward before it can start: its first span is a bubble
    first = min(trace[1], key=lambda e: e["ts"] if e["tid"] != "comm" else float("inf"))
    assert first["name"] == "bubble"
    # and, done first, it waits out rank 0's cooldown (its last backward, 16 ms of delay here): a bubble too,
    # so that compute, communication and bubble spans cover each rank's step with no untraced idle
    spans = {r: sorted((e for e in trace[r] if e["name"] in TASK or e["tid"] in ("comm", "bubble")),
                       key=lambda e: e["ts"]) for r in (0, 1)}
    end = max(e["ts"] + e["dur"] for r in (0, 1) for e in spans[r] if e["name"] in TASK)
    last = max((e for e in spans[1] if e["name"] in TASK), key=lambda e: e["ts"])
    tail = [e for e in spans[1] if e["name"] == "bubble" and e["ts"] >= last["ts"] + last["dur"] - 1]
    assert tail and tail[-1]["ts"] + tail[-1]["dur"] >= end - 1000, (tail, end)
    for r in (0, 1):
        covered, t = 0.0, spans[r][0]["ts"]
        for e in spans[r]:
            covered += max(0.0, e["ts"] + e["dur"] - max(t, e["ts"]))
            t = max(t, e["ts"] + e["dur"])
        assert covered >= 0.9 * (t - spans[r][0]["ts"]), (r, covered, t - spans[r][0]["ts"])


ZB4 = {"parallel.pp": 2, "cluster.num_gpus": 4, "parallel.schedule": "zero_bubble"}
CASES_4 = [{**ZB4, "parallel.tp": 2},
           {**ZB4, "parallel.tp": 2, "model.arch": "gpt", "parallel.sequence_parallel": True},
           {**ZB4, "parallel.dp": 2, "parallel.zero_stage": 1}]


@pytest.fixture(scope="module")
def results_4():
    return spawn(workers.layouts, 4, CASES_4, timeout=300)[0]


@pytest.mark.parametrize("index", range(len(CASES_4)), ids=["tp2", "tp2-gpt-sp", "dp2-zero1"])
def test_zero_bubble_under_tensor_and_data_parallelism_matches_single_process(results_4, index):
    """Course tensor parallelism defers its column / row shards' weight gradients (biases included); the dp
    sync reduces them after the schedule, when every W has run."""
    assert results_4[index]["engine"] == "parallel_3d"
    assert_matches_single_process(results_4[index])


@pytest.mark.parametrize("overrides, message", [
    ({"parallel.pp": 4, "parallel.vpp": 2, "cluster.num_gpus": 4, "parallel.schedule": "interleaved_1f1b"},
     "stages is more than model.n_layers"),
    ({"parallel.pp": 2, "parallel.vpp": 3, "cluster.num_gpus": 2, "parallel.schedule": "interleaved_1f1b",
      "model.n_layers": 8}, "parallel.vpp: 3 does not divide"),
    ({"parallel.pp": 2, "parallel.vpp": 2, "cluster.num_gpus": 2}, "needs parallel.schedule interleaved_1f1b"),
    ({"parallel.pp": 4, "cluster.num_gpus": 4, "parallel.global_batch_size": 2}, "1f1b needs at least pp = 4"),
    ({"parallel.pp": 2, "cluster.num_gpus": 2, "parallel.global_batch_size": 10, "parallel.vpp": 2,
      "parallel.schedule": "interleaved_1f1b", "parallel.micro_batch_size": 2}, "do not split into 2 rounds"),
])
def test_bad_layouts_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        workers.make_config(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_gpipe_accepts_fewer_micro_batches_than_stages():
    cfg = workers.make_config({"parallel.pp": 4, "cluster.num_gpus": 4, "parallel.global_batch_size": 2,
                               "parallel.schedule": "gpipe"})
    assert cfg.grad_accum_steps == 2
