"""The GPU check's calibration, run on CPU: what it fits from a measured run, and the simulator reading it."""

import json

import pytest

from llama_course.commands.gpu_check import preset_of
from simulator.calibration import calibrate_gpu_profile as calibrate_profile
from simulator.config import load_config
from simulator.hardware import gpu_preset
from simulator.simulate import simulate

ONE_B = ["model.preset=llama-1b", "seq_len=2048", "data.corpus=synthetic", "parallel.micro_batch_size=8",
         "parallel.global_batch_size=16", "training.precision=bf16"]


def test_device_names_map_to_presets():
    assert preset_of("NVIDIA H200") == "h200" and preset_of("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert preset_of("NVIDIA A100-SXM4-80GB") == "a100-80gb" and preset_of("Tesla T4") is None


def test_calibration_recovers_the_efficiency_of_a_run_and_the_simulator_applies_it(tmp_path, monkeypatch):
    measured = simulate(load_config(None, ONE_B + ["cluster.gpu=h200", "cluster.num_gpus=1",
                                                   "cluster.compute_efficiency=0.5",
                                                   "cluster.memory_bandwidth_GBps=4000"]))["step_time_s"]
    runs = [{"name": "small bf16", "overrides": [], "step_time_s": 0.01},
            {"name": "llama-1b bf16 eager", "overrides": ONE_B, "step_time_s": measured * 1.2},
            {"name": "llama-1b bf16 compiled", "overrides": ONE_B, "step_time_s": measured},
            {"name": "llama-1b bf16 broken", "error": "OOM"}]
    profile = calibrate_profile("h200", runs, matmul_tflops=700.0, copy_GBps=4000.0)
    assert profile["name"] == "h200" and profile["matmul_efficiency"] == pytest.approx(0.5, abs=1e-3)
    assert "compiled" in profile["note"] and profile["memory_bandwidth_GBps"] == 4000.0
    path = tmp_path / "h200_profile.json"
    path.write_text(json.dumps(profile))
    monkeypatch.setenv("LLAMA_COURSE_GPU_PROFILE", str(path))
    assert gpu_preset("h200").matmul_efficiency == profile["matmul_efficiency"]
    again = simulate(load_config(None, ONE_B + ["cluster.gpu=h200", "cluster.num_gpus=1"]))["step_time_s"]
    assert again == pytest.approx(measured, rel=1e-3)
    assert calibrate_profile("h200", [runs[0]]) is None


# ---------------------------------------------------------------------------------------------
# the check itself: it stops at the first failure, and its cheap parts pass on the CPU
# ---------------------------------------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from llama_course.commands import gpu_check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PY": sys.executable}


def script(*args, timeout=600):
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=ROOT)


def test_a_failing_step_stops_the_script_with_a_non_zero_exit(tmp_path):
    """A failure injected at `numerics` (the second step): the script exits 1 there, says which step failed,
    runs nothing after it, and still writes what it had (the old script caught every failure, exit 0)."""
    out = tmp_path / "check"
    proc = script(out, "--dry-run", "--fail-at", "numerics")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gpu_check: step numerics FAILED" in proc.stdout and "all steps passed" not in proc.stdout
    assert "== gpu_check: engines" not in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["failed"]["step"] == "numerics" and "engines" not in report
    assert "**FAILED at step numerics**" in (out / "gpu_check.md").read_text()


def test_the_failure_can_be_injected_by_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_COURSE_GPU_CHECK_FAIL", "device")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "gpu_check.json").read_text())["failed"]["step"] == "device"


def test_without_a_gpu_it_refuses_unless_dry_run(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_loss_off_the_one_process_run_fails_the_check():
    gpu_check.check_losses("ok", [5.0, 4.9], 5.0 * (1 + 5e-5), 1e-4)
    with pytest.raises(gpu_check.CheckFailed, match="step-1 loss"):
        gpu_check.check_losses("off", [5.01, 4.9], 5.0, 1e-4)
    with pytest.raises(gpu_check.CheckFailed, match="non-finite"):
        gpu_check.check_losses("nan", [5.0, float("nan")], 5.0, 1e-4)


def test_the_dry_run_passes_on_the_cpu(tmp_path):
    """Numerics (CPU twice), three one-rank engines and three two-rank layouts (gloo, through torchrun) in
    strict mode: exit 0 and a summary naming them."""
    out = tmp_path / "check"
    proc = script(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: all steps passed" in proc.stdout
    summary = (out / "gpu_check.md").read_text()
    assert "numerics: tiny fp32" in summary and "course ZeRO-1" in summary and "parameter server" in summary
    report = json.loads((out / "gpu_check.json").read_text())
    assert [r["name"] for r in report["two_ranks"]] == ["dp naive", "dp bucketed", "parameter server"]
