"""The composable engine (engine.py, core/train_step.py): the combinations real systems run, each built
from the same pieces and held against the single-process run.

    ZeRO-1/2 under tensor and pipeline parallelism     Megatron-LM's distributed optimizer (course sync)
    FSDP2 with DTensor tensor parallelism              torchtitan's 2-D layout (FSDP2Sync on a (dp, tp) mesh)
    gradient compression as a data-parallel hook       the course's ring, torch's flat all-reduce under tp,
                                                       torch DDP's register_comm_hook (course top-k, torch
                                                       fp16 and PowerSGD hooks)
    load balancing with ZeRO                           LoadBalancedPlan + DataParallelSync
    compression state in checkpoints                   top-k / PowerSGD residuals and Q resume bit-exactly
                                                       (course engines)

Top-k at ratio 1 sends every entry: exact up to summation order, so it checks that the hook is wired
into every path (at ratio < 1 the result differs by design). Launches: one of 4 ranks for the layouts,
one of 4 for load balancing, one of 2 for checkpoints."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import workers_engine as W  # noqa: E402

from llama_course.core.distributed import Context  # noqa: E402
from llama_course.core.model import build_model  # noqa: E402
from llama_course.core.testing import spawn  # noqa: E402
from llama_course.engine import build_engine, engine_parts  # noqa: E402
from simulator.config import ConfigError, load_config  # noqa: E402

FOUR = {"cluster.num_gpus": 4, "parallel.bucket_mb": 0.05}
TOPK_ALL = {"parallel.compression": "topk", "parallel.topk_ratio": 1.0}
EXACT = {   # name -> (overrides, sync, transforms)
    "zero1_tp2": ({**FOUR, "parallel.tp": 2, "parallel.zero_stage": 1}, "DataParallelSync", ["tensor_parallel"]),
    "zero2_tp2_sp": ({**FOUR, "parallel.tp": 2, "parallel.zero_stage": 2, "parallel.sequence_parallel": True},
                     "DataParallelSync", ["tensor_parallel"]),
    "zero1_pp2": ({**FOUR, "parallel.pp": 2, "parallel.zero_stage": 1, "parallel.schedule": "1f1b"},
                  "DataParallelSync", ["pipeline_parallel"]),
    "zero2_pp2": ({**FOUR, "parallel.pp": 2, "parallel.zero_stage": 2, "parallel.schedule": "gpipe"},
                  "DataParallelSync", ["pipeline_parallel"]),
    "fsdp2_tp2": ({**FOUR, "parallel.tp": 2, "parallel.zero_stage": 3, "parallel.implementation": "torch"},
                  "FSDP2Sync", ["torch_tensor_parallel"]),
    "fsdp2_zero2_tp2_sp": ({**FOUR, "parallel.tp": 2, "parallel.zero_stage": 2, "parallel.implementation": "torch",
                            "parallel.sequence_parallel": True}, "FSDP2Sync", ["torch_tensor_parallel"]),
    "topk_course_tp2": ({**FOUR, "parallel.tp": 2, **TOPK_ALL}, "DataParallelSync", ["tensor_parallel"]),
    "topk_torch_tp2": ({**FOUR, "parallel.tp": 2, "parallel.implementation": "torch", **TOPK_ALL},
                       "TorchAllReduceSync", ["torch_tensor_parallel"]),
    "topk_ddp_hook": ({**FOUR, "parallel.implementation": "torch", **TOPK_ALL}, "DDPSync", []),
}
LOSSY = {   # DDP's own hooks: fp16 rounds; PowerSGD all-reduces exactly for 2 steps, compresses from step 3
    "fp16_ddp_hook": {**FOUR, "parallel.implementation": "torch", "parallel.compression": "fp16"},
    "powersgd_ddp_hook": {**FOUR, "parallel.implementation": "torch", "parallel.compression": "powersgd",
                          "parallel.powersgd_rank": 2},
}
NAMES = list(EXACT) + list(LOSSY)


@pytest.fixture(scope="module")
def combos():
    cases = [EXACT[n][0] for n in EXACT] + [LOSSY[n] for n in LOSSY]
    return dict(zip(NAMES, spawn(W.combos, 4, cases, timeout=500)[0]))


def _relative(state, ref):
    diff = sum(float((state[k].double() - ref[k].double()).pow(2).sum()) for k in ref) ** 0.5
    return diff / sum(float(ref[k].double().pow(2).sum()) for k in ref) ** 0.5


@pytest.mark.parametrize("name", list(EXACT))
def test_combination_matches_single_process(combos, name):
    r, (_, sync, transforms) = combos[name], EXACT[name]
    assert r["sync"] == sync and r["transforms"] == transforms          # built from the pieces it names
    ref = r["reference"]
    assert len({tuple(x) for x in r["rank_losses"]}) == 1, "ranks logged different losses"
    for got, want in zip(r["losses"], ref["losses"]):
        assert got == pytest.approx(want, rel=1e-5)
    assert r["norms"][0] == pytest.approx(ref["grad_norm"], rel=1e-5)
    assert r["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)
    assert set(r["weights"]) == set(ref["weights"])
    assert _relative(r["weights"], ref["weights"]) < 1e-5


def test_torch_ddp_compression_hooks_are_active(combos):
    fp16, power = combos["fp16_ddp_hook"], combos["powersgd_ddp_hook"]
    ref = fp16["reference"]
    for got, want in zip(fp16["losses"], ref["losses"]):
        assert got == pytest.approx(want, rel=1e-3)                  # fp16 on the wire: rounding only
    assert 0 < _relative(fp16["weights"], ref["weights"]) < 1e-2
    for got, want in zip(power["losses"], ref["losses"]):            # loss 3 is before the compressed update
        assert got == pytest.approx(want, rel=1e-5)
    assert 1e-5 < _relative(power["weights"], ref["weights"]) < 0.1   # step 3 was low-rank


def test_load_balancing_composes_with_zero():
    """dynamic_batch under a 3x straggler with ZeRO-2 (course) is still exactly the global-batch mean;
    backup_workers with ZeRO-1 drops the late rank's gradient and trains on."""
    import workers_parameter_server as w

    from llama_course.trainer import run_worker

    tiny = {"model": {"preset": "tiny"}, "seq_len": 32,
            "training": {"precision": "fp32", "steps": 3, "warmup_steps": 1, "eval_batches": 1},
            "parallel": {"global_batch_size": 8, "micro_batch_size": 2, "implementation": "course",
                         "bucket_mb": 0.05}, "cluster": {"num_gpus": 4}}
    runs = [["load_balance.policy=dynamic_batch", "faults.slow={3: 3}", "parallel.zero_stage=2"],
            ["load_balance.policy=backup_workers", "faults.slow={3: 4}", "parallel.zero_stage=1"]]
    dynamic, backup = spawn(w.run_configs, 4, [tiny] * len(runs), runs, timeout=200)[0]
    oracle = run_worker(load_config(tiny, ["cluster.num_gpus=1"]), quiet=True)
    for got, want in zip(dynamic, oracle):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    assert len(backup) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in backup)
    assert any(abs(b["loss"] - o["loss"]) > 1e-6 for b, o in zip(backup[1:], oracle[1:]))


def test_compression_state_resumes_bit_exactly(tmp_path):
    """Top-k's residuals and PowerSGD's residuals and Q (the course's data parallelism) are in the checkpoint:
    a run cut after step 2 and resumed logs exactly the uninterrupted run's losses. (torch DDP's hooks
    cannot: DDP rebuilds its buckets after each process's first iteration; see data_parallel_torch.py.)"""
    base = {"model": {"preset": "tiny"}, "seq_len": 32, "cluster": {"num_gpus": 2},
            "training": {"precision": "fp32", "steps": 4, "warmup_steps": 0, "eval_every": 0, "eval_batches": 1},
            "parallel": {"global_batch_size": 4, "micro_batch_size": 2, "bucket_mb": 0.05},
            "checkpoint": {"every_steps": 2, "keep": 5}}
    cases = [{**base, "parallel": {**base["parallel"], "compression": "topk", "topk_ratio": 0.05}},
             {**base, "parallel": {**base["parallel"], "compression": "powersgd", "powersgd_rank": 2}}]
    for straight, again in spawn(W.resumed, 2, cases, str(tmp_path), timeout=300)[0]:
        assert [r["step"] for r in straight] == [1, 2, 3, 4] and [r["step"] for r in again] == [3, 4]
        assert [r["loss"] for r in again] == [r["loss"] for r in straight[2:]]      # exactly


def test_refused_combinations_say_which_fields_in_one_line():
    for overrides, field in [
        ({"cluster": {"num_gpus": 4}, "parallel": {"pp": 2, "zero_stage": 3}}, "parallel.zero_stage"),
        ({"cluster": {"num_gpus": 4}, "parallel": {"tp": 2}, "load_balance": {"policy": "dynamic_batch"}},
         "load_balance.policy"),
        ({"parallel": {"strategy": "parameter_server", "dp": 2}, "training": {"precision": "fp16"}},
         "training.precision"),
        ({"cluster": {"num_gpus": 2}, "parallel": {"sync": "local_sgd", "compression": "topk"}},
         "parallel.compression"),
    ]:
        with pytest.raises(ConfigError) as e:     # validation refuses it (the capability table), before any piece
            engine_parts(load_config(overrides), Context())
        assert field in str(e.value).split(":")[0] and "\n" not in str(e.value)


def test_one_replica_has_no_sync_and_runs_sequentially():
    cfg = load_config({"parallel": {"activation_checkpointing": "full"}, "training": {"precision": "fp32"}})
    engine = build_engine(cfg, Context(), build_model(cfg))
    assert type(engine.sync).__name__ == "GradientSync" and engine.schedule.name == "single"
    assert [t.name for t in engine.transforms] == ["activation_checkpointing"]
    x = torch.randint(0, cfg.model.vocab_size, (2, 16))
    out = engine.train_step([(x, x)], 1e-3)
    assert out["loss"] > 0 and not out["skipped"] and "forward_backward_s" in out
