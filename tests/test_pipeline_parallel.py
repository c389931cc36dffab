"""Pipeline parallel: GPipe, 1F1B, interleaved 1F1B in the course's send/recv engine and in
torch.distributed.pipelining, against the single-process run (one 2-rank spawn, balanced stages and
activation checkpointing included); the traced schedule; bad layouts."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402
from test_tensor_parallel import assert_matches_single_process  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from simulator.config import ConfigError  # noqa: E402
from simulator.pipeline_parallel import schedule_order  # noqa: E402

PP = {"parallel.pp": 2, "cluster.num_gpus": 2}
CASES = [
    {**PP, "parallel.schedule": "gpipe"},
    {**PP, "parallel.schedule": "1f1b", "parallel.activation_checkpointing": "full"},
    {**PP, "parallel.schedule": "interleaved_1f1b", "parallel.vpp": 2},
    {**PP, "parallel.schedule": "1f1b", "load_balance.policy": "balanced_stages", "model.n_layers": 3},
    {**PP, "parallel.schedule": "gpipe", "parallel.implementation": "torch"},
    {**PP, "parallel.schedule": "1f1b", "parallel.implementation": "torch"},
    {**PP, "parallel.schedule": "interleaved_1f1b", "parallel.vpp": 2, "parallel.implementation": "torch"},
]
TRACED = {**PP, "parallel.schedule": "1f1b"}


@pytest.fixture(scope="module")
def results():
    return spawn(workers.pipelines, 2, CASES, TRACED, timeout=240)[0]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c) for c in CASES])
def test_schedule_matches_single_process(results, index):
    course = CASES[index].get("parallel.implementation", "course") == "course"
    assert results["layouts"][index]["engine"] == ("pipeline_parallel" if course else "torch_pipeline")
    assert_matches_single_process(results["layouts"][index])


def test_trace_shows_the_1f1b_order_and_its_bubble(results):
    """Each rank's compute spans run in schedule_order's order; idle time is recorded as bubble spans."""
    for rank, events in enumerate(results["trace"]):
        compute = sorted((e for e in events if e["tid"] == "compute" and e["name"] in ("forward", "backward")),
                         key=lambda e: e["ts"])
        order = [("F" if e["name"] == "forward" else "B", e["args"]["micro_batch"], e["args"]["chunk"])
                 for e in compute]
        assert order == schedule_order("1f1b", 2, 4, 1, rank)
        names = {e["name"] for e in events}
        assert {"send", "recv", "bubble"} <= names
        bubble = sum(e["dur"] for e in events if e["name"] == "bubble")
        assert bubble > 0
    # rank 1 (last stage) waits for rank 0's first forward before it can start: its first span is a bubble
    first = min(results["trace"][1], key=lambda e: e["ts"] if e["tid"] != "comm" else float("inf"))
    assert first["name"] == "bubble"


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
