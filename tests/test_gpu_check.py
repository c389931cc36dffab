"""The GPU check's calibration, run on CPU: what it fits from a measured run, and the simulator reading it."""

import json

import pytest

from llama_course.commands.gpu_check import calibrate_profile, preset_of
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
