"""3-D parallelism: dp x tp x pp layouts, course and torch implementations, against the single-process run.
One 4-rank spawn for the 2-D layouts; one 8-rank spawn (slow) for dp 2 x tp 2 x pp 2 (course, torch, and the
course's ZeRO-1 under tp x pp: the layout of the Llama 2/3 runs as Megatron-LM's distributed optimizer)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402
from test_tensor_parallel import assert_matches_single_process  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from llama_course.engine import engine_name  # noqa: E402

FOUR = {"cluster.num_gpus": 4}
CASES_4 = [
    {**FOUR, "parallel.tp": 2, "parallel.pp": 2},
    {**FOUR, "parallel.tp": 2, "parallel.pp": 2, "parallel.implementation": "torch"},
    {**FOUR, "parallel.tp": 2},                                            # dp 2 x tp 2
    {**FOUR, "parallel.tp": 2, "parallel.implementation": "torch", "parallel.sequence_parallel": True},
    {**FOUR, "parallel.pp": 2, "parallel.schedule": "gpipe"},              # dp 2 x pp 2
    {**FOUR, "parallel.tp": 2, "parallel.pp": 2, "parallel.vpp": 2, "parallel.schedule": "interleaved_1f1b",
     "parallel.sequence_parallel": True, "parallel.activation_checkpointing": "selective"},
    {**FOUR, "parallel.pp": 4, "parallel.schedule": "1f1b"},
]
EIGHT = {"cluster.num_gpus": 8, "parallel.tp": 2, "parallel.pp": 2, "parallel.global_batch_size": 8}
CASES_8 = [EIGHT, {**EIGHT, "parallel.implementation": "torch"},
           {**EIGHT, "parallel.zero_stage": 1, "parallel.bucket_mb": 0.05}]   # Megatron-LM's distributed optimizer


def test_engine_names():
    assert engine_name(workers.make_config(CASES_4[0])) == "parallel_3d"
    assert engine_name(workers.make_config(CASES_4[-1])) == "pipeline_parallel"


@pytest.fixture(scope="module")
def results_4():
    return spawn(workers.layouts, 4, CASES_4, timeout=300)[0]


@pytest.mark.parametrize("index", range(len(CASES_4)), ids=[str(c) for c in CASES_4])
def test_four_rank_layouts_match_single_process(results_4, index):
    cfg = workers.make_config(CASES_4[index])
    assert cfg.parallel.dp * cfg.parallel.tp * cfg.parallel.pp == 4
    assert_matches_single_process(results_4[index])


@pytest.mark.slow
def test_dp2_tp2_pp2_matches_single_process():
    for case, result in zip(CASES_8, spawn(workers.layouts, 8, CASES_8, timeout=400)[0]):
        cfg = workers.make_config(case)
        assert (cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.pp) == (2, 2, 2)
        assert result["engine"] == "parallel_3d"
        assert_matches_single_process(result)
