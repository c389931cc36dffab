"""The Makefile's torch line: the CPU build where no NVIDIA GPU is seen, the CUDA build where one is, and the
documented TORCH_SPEC override (read from `make -n`, which prints the commands without running them)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def torch_line(tmp_path, path: str, *args) -> str:
    out = subprocess.run(["make", "-n", "-B", "venv", f"VENV={tmp_path / 'venv'}", *args], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PATH": path}, timeout=60)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if "pip install" in line and " torch==" in line)


@pytest.fixture
def fake_nvidia_smi(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return str(bin_dir)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_without_a_gpu_the_cpu_build_is_installed(tmp_path):
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists())
    line = torch_line(tmp_path, path)
    assert "torch==2.13.0+cpu 2>/dev/null ||" in line                  # a local wheel or mirror first
    assert line.endswith("torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_with_a_gpu_the_default_build_and_the_override_still_work(tmp_path, fake_nvidia_smi):
    path = f"{fake_nvidia_smi}:{os.environ['PATH']}"
    assert torch_line(tmp_path, path).endswith("--no-input torch==2.13.0")
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    assert torch_line(tmp_path, path, f"TORCH_SPEC={spec}").endswith(f"--no-input {spec}")
