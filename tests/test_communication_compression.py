"""Gradient compression (llama_course/parallel/communication_compression.py): accuracy, error feedback, bytes."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import workers_communication_compression as W  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from llama_course.parallel.communication_compression import build_compressor  # noqa: E402
from simulator.config import ConfigError, load_config  # noqa: E402

N = 32 * 16 + 16 + 24 * 8


@pytest.fixture(scope="module")
def results():
    return spawn(W.check_all, 2, timeout=120)


def test_casts_halve_the_bytes_and_stay_close(results):
    r = results[0]
    assert r["none"]["err"] < 1e-6 and r["none"]["bytes"] == 4 * N          # ring, N = 2: 2 (N-1)/N 4 n
    for name, tol in (("fp16", 2e-3), ("bf16", 2e-2)):
        assert r[name]["bytes"] == 2 * N
        assert 0 < r[name]["err"] < tol
        assert r[name]["rs_err"] < tol


def test_topk_and_powersgd_keep_what_they_drop(results):
    for rank_result in results:
        for name in ("topk", "powersgd"):
            assert rank_result[name]["conservation"] < 1e-5, name      # nothing lost, only delayed
            assert rank_result[name]["lossy"] > 1e-3, name            # ... and it really compressed
    r = results[0]
    k = int(0.1 * N)
    assert r["topk"]["bytes"] == 8 * k                                 # (N-1) k (4 B value + 4 B index)
    # PowerSGD rank 2: P (a x 2) and Q (b x 2) per matrix, the vector exact: ring bytes with N = 2
    assert r["powersgd"]["bytes"] == 4 * (2 * (32 + 16) + 2 * (24 + 8) + 16)
    assert r["powersgd_rank1_err"] < 1e-5


def test_bad_combinations_are_config_errors():
    """top-k and PowerSGD compress all-reduces: with ZeRO-2/3's reduce-scatters, validation refuses them."""
    for method in ("topk", "powersgd"):
        with pytest.raises(ConfigError, match=r"^parallel\.zero_stage, parallel\.compression: 2, " + method):
            load_config({"parallel": {"compression": method, "zero_stage": 2}, "cluster": {"num_gpus": 2}})
    assert build_compressor(load_config({"parallel": {"compression": "fp16", "zero_stage": 2},
                                         "cluster": {"num_gpus": 2}})).name == "fp16"
