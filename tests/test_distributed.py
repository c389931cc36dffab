"""core/distributed.py: which device and backend a process takes when a machine has fewer GPUs than
processes (the decision function, with torch.cuda faked), and the launcher's one line."""

import os
import subprocess
import sys

import pytest
import torch

from llama_course.core import distributed as D
from llama_course.core.testing import spawn
from simulator.config import ConfigError

sys.path.insert(0, os.path.dirname(__file__))      # the spawned workers' modules


@pytest.mark.parametrize("local_rank, local_world, preference, cuda, gpus, expect", [
    (1, 2, "auto", True, 2, ("cuda:1", "nccl", False)),      # one GPU each
    (1, 2, "auto", True, 1, ("cpu", "gloo", True)),          # the 2-process demo on a one-GPU laptop: fall back
    (0, 1, "auto", True, 1, ("cuda:0", "nccl", False)),
    (0, 2, "auto", False, 0, ("cpu", "gloo", False)),        # no GPU: CPU, nothing to announce
    (0, 2, "cpu", True, 8, ("cpu", "gloo", False)),
    (3, 4, "cuda", True, 8, ("cuda:3", "nccl", False)),
])
def test_device_choice(local_rank, local_world, preference, cuda, gpus, expect):
    device, backend, note = D.choose_device(local_rank, local_world, preference, cuda, gpus)
    assert (str(device), backend, note is not None) == expect
    if note:
        assert "\n" not in note and f"{local_world} processes" in note and f"--nproc {gpus}" in note


def test_cuda_preference_refuses_too_few_gpus_in_one_line():
    with pytest.raises(ConfigError) as e:
        D.choose_device(0, 4, "cuda", True, 2)
    assert "--nproc 4" in str(e.value) and "2 GPUs found" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no CUDA device"):
        D.choose_device(0, 1, "cuda", False, 0)
    with pytest.raises(ConfigError, match="auto, cuda or cpu"):
        D.choose_device(0, 1, "gpu", True, 1)


def test_launcher_falls_back_on_a_one_gpu_machine(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("LLAMA_COURSE_DEVICE", raising=False)
    assert D.launcher_env(2) == {"LLAMA_COURSE_DEVICE": "cpu"}      # the workers then take the CPU silently
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 processes on this machine but 1 GPU" in err
    assert D.launcher_env(1) == {}
    monkeypatch.setenv("LLAMA_COURSE_DEVICE", "cuda")
    with pytest.raises(ConfigError, match="--nproc 2: 2 processes on this machine but 1 GPU found"):
        D.launcher_env(2)


def test_train_with_cuda_required_on_a_cpu_machine_exits_2_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {"LLAMA_COURSE_DEVICE": "cuda", "PATH": "/usr/bin:/bin", "LLAMA_COURSE_CACHE": str(tmp_path),
           "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "llama_course", "train", "configs/tiny.yaml", "--nproc", "2",
                           "--set", "training.steps=1"], capture_output=True, text=True, env=env, timeout=300,
                          cwd=env["PYTHONPATH"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr


@pytest.mark.parametrize("barrier", [True, False])
def test_cleanup_after_a_finished_run_waits_for_every_rank(tmp_path, barrier):
    """run_worker leaves through cleanup(barrier=True) once it finished: rank 0, which hosts the store
    other ranks may still read, leaves only after the last rank arrives (without it, it leaves first)."""
    import workers_engine as w

    (tmp_path / str(barrier)).mkdir()
    saw_late = spawn(w.leave_after_a_late_peer, 2, str(tmp_path / str(barrier)), barrier, timeout=60)
    assert saw_late == [barrier, True]
