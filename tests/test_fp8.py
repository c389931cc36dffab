"""FP8 matmuls (training.fp8, llama_course/core/fp8.py): the casts against their closed-form rounding error,
an FP8 linear layer against fp32, FP8 layouts against the single-process FP8 run (one 2-rank spawn, strict
mode: tests/conftest.py sets LLAMA_COURSE_STRICT=1), FP8 training against bf16 on the corpus, and the
simulator's price of FP8 and its refusals, the same in every command."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402
from test_tensor_parallel import assert_matches_single_process  # noqa: E402

from llama_course.core import fp8  # noqa: E402
from llama_course.core.model import Linear, build_model  # noqa: E402
from llama_course.core.testing import spawn  # noqa: E402
from llama_course.trainer import train  # noqa: E402
from simulator.config import ConfigError, load_config  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

FP8 = {"training.precision": "bf16", "training.fp8": True}
LAYOUTS = [
    {**FP8, "cluster.num_gpus": 2},                                                      # dp 2 (course)
    {**FP8, "cluster.num_gpus": 2, "parallel.pp": 2, "parallel.schedule": "zero_bubble"},  # W deferred, in FP8
    {**FP8, "cluster.num_gpus": 2, "parallel.pp": 2, "parallel.implementation": "torch"},  # torch's 1F1B
]
TP = {**FP8, "cluster.num_gpus": 2, "parallel.tp": 2}    # each rank scales its own weight shard


def test_casts_round_to_the_nearest_fp8_number():
    """q = fp8(t s) with s = fp8_max / amax: the largest magnitude lands on the format's largest number, and
    every normal value is off by at most half a mantissa step: 2^-4 relative for e4m3 (3 mantissa bits),
    2^-3 for e5m2 (2 bits)."""
    t = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    for dtype, half_step in ((fp8.E4M3, 2.0 ** -4), (fp8.E5M2, 2.0 ** -3)):
        q, s = fp8.quantize(t, dtype)
        assert q.dtype == dtype
        back = q.float() / s
        assert float(back.abs().max()) == pytest.approx(float(t.abs().max()), rel=1e-6)
        normal = (t * s).abs() >= torch.finfo(dtype).tiny
        rel = ((back - t).abs() / t.abs())[normal]
        assert float(rel.max()) <= half_step * (1 + 1e-6)
        assert float(rel.max()) > half_step / 2              # it did round (not a silent fp32 pass-through)


def test_fp8_product_is_the_product_of_the_cast_operands():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 96, generator=g), torch.randn(96, 32, generator=g)
    qa, sa = fp8.quantize(a, fp8.E4M3)
    qb, sb = fp8.quantize(b, fp8.E5M2)
    got = fp8.matmul(a, b, fp8.E4M3, fp8.E5M2, torch.float32)
    torch.testing.assert_close(got, (qa.float() @ qb.float()) / (sa * sb))
    err = float((got - a @ b).norm() / (a @ b).norm())
    assert 1e-3 < err < 0.1


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fp8_linear_layer_against_fp32(autocast):
    """Forward, input gradient and weight gradient of an FP8 linear layer (e4m3 x and W, e5m2 dy) are within
    FP8's rounding of the fp32 layer's (relative error below 10%), and not equal to them; gradients stay fp32."""
    torch.manual_seed(0)
    layer = Linear(64, 48, bias=True)
    x = torch.randn(2, 16, 64, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    want = [y.detach(), x.grad.clone(), layer.weight.grad.clone()]
    x.grad = None
    layer.zero_grad()
    layer.fp8 = True
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = layer(x)
    assert "DeferredLinear" in y.grad_fn.name()
    y.float().square().sum().backward()
    for got, ref in zip([y.detach(), x.grad, layer.weight.grad], want):
        err = float((got.float() - ref).norm() / ref.norm())
        assert 1e-4 < err < 0.1
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_use_fp8_switches_every_block_linear_but_the_output_head():
    cfg = workers.make_config(FP8)
    model = build_model(cfg)
    assert fp8.use_fp8(model) == 7 * cfg.model.n_layers              # wq wk wv wo w1 w2 w3 per block
    assert not model.output.fp8
    assert all(m.fp8 for n, m in model.named_modules() if isinstance(m, Linear) and n != "output")


@pytest.fixture(scope="module")
def results():
    return spawn(workers.layouts, 2, LAYOUTS + [TP], timeout=300)[0]


@pytest.mark.parametrize("index", range(len(LAYOUTS)), ids=["dp2", "pp2-zero-bubble", "pp2-torch"])
def test_fp8_layouts_match_the_single_process_fp8_run(results, index):
    """The same micro-batches see the same per-tensor scales on one process and on two, so data and
    pipeline parallelism in FP8 reproduce the single-process FP8 run (assert_matches_single_process's
    tolerances); the oracle is itself FP8 (it differs from bf16: test_fp8_training_follows_bf16)."""
    assert_matches_single_process(results[index])


def test_fp8_tensor_parallel_scales_each_shard(results):
    """Under tensor parallelism each rank scales its own shard of a weight, so its casts differ from the
    whole weight's: the losses agree with the single process to FP8's rounding (1%), not to fp32's."""
    got, ref = results[len(LAYOUTS)], results[len(LAYOUTS)]["reference"]
    assert got["engine"] == "tensor_parallel"
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-2)


def test_fp8_training_follows_bf16(tmp_path):
    """The tiny LLaMA on the built-in corpus, 40 steps, one process: FP8 learns as bf16 does (final loss
    within 3%, both well below the first), and it is really FP8 (the losses are not bf16's)."""
    runs = {}
    for name, fp8_on in (("bf16", "false"), ("fp8", "true")):
        runs[name] = [r["loss"] for r in train("configs/tiny.yaml", [
            "cluster.num_gpus=1", "training.precision=bf16", f"training.fp8={fp8_on}", "training.steps=40",
            "training.eval_every=0", "training.warmup_steps=5"], metrics=str(tmp_path / f"{name}.jsonl"))]
    bf16, f8 = runs["bf16"], runs["fp8"]
    assert f8[-1] < 0.8 * f8[0] and bf16[-1] < 0.8 * bf16[0]
    assert f8[-1] == pytest.approx(bf16[-1], rel=0.03)
    assert f8 != bf16


def test_simulated_fp8_runs_the_linear_matmuls_at_twice_the_rate():
    """On an H100, FP8 prices the blocks' linear matmuls at the FP8 peak (2x bf16) plus their casts: a
    matmul-bound step gets faster, by less than 2x (attention, norms, the head stay bf16)."""
    base = ["cluster.gpu=h100-sxm", "training.precision=bf16", "parallel.implementation=course",
            "parallel.zero_stage=1"]
    bf16 = simulate(load_config("configs/llama-7b-a100.yaml", base))
    f8 = simulate(load_config("configs/llama-7b-a100.yaml", base + ["training.fp8=true"]))
    speedup = bf16["breakdown_s"]["compute"] / f8["breakdown_s"]["compute"]
    assert 1.2 < speedup < 2.0
    assert f8["memory_per_gpu_bytes"] == bf16["memory_per_gpu_bytes"]


@pytest.mark.parametrize("overrides, message", [
    (["training.fp8=true", "training.precision=fp32"], "training.fp8: FP8 matmuls run under bf16"),
    (["training.fp8=true", "training.precision=bf16", "cluster.gpu=a100-80gb"], "has no FP8 tensor cores"),
    (["training.fp8=true", "training.precision=bf16", "cluster.num_gpus=2", "parallel.tp=2",
      "parallel.implementation=torch"], "not with torch's tensor parallelism"),
])
def test_fp8_refusals_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config("configs/tiny.yaml", overrides)
    assert "\n" not in str(e.value)
