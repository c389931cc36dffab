"""Mixed precision (llama_course/core/mixed_precision.py) in every engine, on CPU autocast.

fp16: an inf injected into one rank's gradient at step 2 under data (ZeRO-2, DDP), tensor and pipeline
parallelism makes every rank skip that step (found_inf is reduced over the dp, tp and pp groups: the
ranks that did not see it skip too), halves the loss scale, and leaves the weights where the
single-process run with the same injection has them. bf16: autocast computes the logits in bf16, the
weights and gradients stay fp32, and the data-parallel reduction moves fp32 (4-byte) gradients unless
training.grad_reduce_dtype says bf16 (half the bytes). One spawn of 2 ranks runs every case."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import workers_mixed_precision as W  # noqa: E402

from llama_course.core.distributed import Context  # noqa: E402
from llama_course.core.mixed_precision import LossScaler, MixedPrecision  # noqa: E402
from llama_course.core.testing import spawn  # noqa: E402
from simulator.workload import count_params  # noqa: E402

FP16 = {"training.precision": "fp16", "cluster.num_gpus": 2}
OVERFLOW = [
    ({**FP16, "parallel.zero_stage": 2, "parallel.bucket_mb": 0.05}, 1),     # dp 2, ZeRO-2 (sharded gradients)
    ({**FP16, "parallel.implementation": "torch"}, 1),                         # dp 2, torch DDP
    ({**FP16, "parallel.tp": 2}, 1),                                           # tp 2
    ({**FP16, "parallel.pp": 2, "parallel.schedule": "1f1b"}, 0),              # pp 2: stage 0 overflows
]
BF16 = {"training.precision": "bf16", "cluster.num_gpus": 2, "parallel.bucket_mb": 0.05}
CASES_BF16 = [BF16, {**BF16, "training.grad_reduce_dtype": "bf16"}]
WEIGHT_RTOL = 1e-4          # fp16 matmuls sharded vs whole round differently (measured: 0 to 8e-6)


@pytest.fixture(scope="module")
def results():
    return spawn(W.run_all, 2, OVERFLOW, CASES_BF16, timeout=400)[0]


@pytest.fixture(scope="module")
def oracle():
    return W.reference(FP16)


def _relative(state, ref):
    diff = sum(float((state[k].double() - ref[k].double()).pow(2).sum()) for k in ref) ** 0.5
    return diff / sum(float(ref[k].double().pow(2).sum()) for k in ref) ** 0.5


def test_scaler_backs_off_on_overflow_and_grows_after_good_steps():
    s = LossScaler(init_scale=8.0, growth_interval=3)
    g = [torch.tensor([8.0, 16.0])]
    assert not s.unscale_(g) and torch.equal(g[0], torch.tensor([1.0, 2.0]))
    assert s.unscale_([torch.tensor([float("inf")])])
    s.update(True)
    assert s.scale == 4.0 and s.good_steps == 0
    for _ in range(3):
        s.update(False)
    assert s.scale == 8.0 and s.good_steps == 0


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_cpu_autocast_runs_matmuls_in_the_training_precision(precision, dtype):
    mp = MixedPrecision(precision, Context().device)
    with mp.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == dtype and (mp.scaler is not None) == (precision == "fp16")


@pytest.mark.parametrize("index", range(len(OVERFLOW)), ids=[str(c[0]) for c in OVERFLOW])
def test_an_overflow_on_one_rank_skips_the_step_everywhere(results, oracle, index):
    r = results["overflow"][index]
    expected_skips = [step == W.INJECT for step in range(W.STEPS)]
    assert oracle["skipped"] == expected_skips
    for skipped, scale in r["every_rank"]:                 # every rank, the one that did not see the inf too
        assert skipped == expected_skips
        assert scale == oracle["scale"] == [W.SCALE, W.SCALE, W.SCALE / 2, W.SCALE / 2]
    assert r["unchanged"]                                  # the skipped step changed no weight, anywhere
    err = _relative(r["weights"], oracle["weights"])
    print(OVERFLOW[index][0], "weights vs single process:", err)
    assert err < WEIGHT_RTOL
    for got, want in zip(r["losses"], oracle["losses"]):
        assert got == pytest.approx(want, rel=WEIGHT_RTOL)


def test_bf16_keeps_fp32_weights_and_reduces_fp32_gradients_unless_told(results):
    fp32_reduce, bf16_reduce = results["bf16"]
    cfg = W.make_config(BF16)
    ring = 2 * (2 - 1) / 2 * count_params(cfg.model)            # elements each rank sends per all-reduce
    assert fp32_reduce["logits_dtypes"] == ["torch.bfloat16"]   # autocast ran the head in bf16
    assert fp32_reduce["param_dtypes"] == ["torch.float32"]     # master weights and their gradients: fp32
    assert fp32_reduce["bytes_sent"][0] == pytest.approx(4 * ring, rel=1e-3)
    assert bf16_reduce["bytes_sent"][0] == pytest.approx(2 * ring, rel=1e-3)
    single = W.reference_bf16(BF16)
    for got, want in zip(fp32_reduce["losses"], single):
        assert got == pytest.approx(want, rel=1e-2)
