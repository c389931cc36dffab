"""The trainer: loss falls, resume is bit-exact, DDP matches one process, a killed rank is restarted,
a corrupted latest checkpoint falls back to the previous one; eval and generate read checkpoints."""

import json
import os
import subprocess
import sys

import pytest

from llama_course.core import checkpoint as ckpt
from llama_course.trainer import lr_at, run_worker
from simulator.config import load_config

TINY = "configs/tiny.yaml"
FAST = ["cluster.num_gpus=1", "parallel.global_batch_size=8", "parallel.micro_batch_size=4", "seq_len=64",
        "training.eval_every=0", "training.eval_batches=1"]


def cli(*argv, check=True):
    proc = subprocess.run([sys.executable, "-m", "llama_course", *argv], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_lr_schedule_warms_up_then_decays():
    cfg = load_config(TINY, ["training.steps=100", "training.warmup_steps=10", "training.lr=1.0", "training.min_lr=0.1"])
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_loss_falls_on_the_builtin_corpus(tmp_path):
    cfg = load_config(TINY, FAST + ["training.steps=60", "training.warmup_steps=5"])
    records = run_worker(cfg, metrics_path=str(tmp_path / "m.jsonl"), quiet=True)
    assert len(records) == 60 and read(tmp_path / "m.jsonl") == records
    first, last = records[0], records[-1]
    assert first["loss"] > 6.0                      # about ln(512) = 6.24 at initialisation
    assert last["loss"] < first["loss"] - 1.0
    assert last["val_loss"] < first["loss"] - 1.0
    for key in ("step", "loss", "tokens_per_s", "step_time_s", "lr", "grad_norm", "peak_memory_bytes"):
        assert key in last


def test_resume_is_bit_exact(tmp_path):
    over = FAST + ["training.steps=12", "training.warmup_steps=3", "checkpoint.every_steps=6"]
    straight = run_worker(load_config(TINY, over), quiet=True)
    first = run_worker(load_config(TINY, over), checkpoint_dir=str(tmp_path / "ck2"), metrics_path=str(tmp_path / "a"),
                       quiet=True)
    assert [r["loss"] for r in first] == [r["loss"] for r in straight]
    # cut the run at step 6: drop the newer checkpoint and resume from step 6
    os.remove(tmp_path / "ck2" / "latest")
    import shutil

    shutil.rmtree(tmp_path / "ck2" / "step_00000012")
    resumed = run_worker(load_config(TINY, over), checkpoint_dir=str(tmp_path / "ck2"),
                         metrics_path=str(tmp_path / "a"), quiet=True)
    assert [r["step"] for r in resumed] == list(range(7, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight[6:]]     # exactly, not approximately
    assert [r["step"] for r in read(tmp_path / "a")] == list(range(1, 13))


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    over = FAST + ["training.steps=4", "checkpoint.every_steps=2", "checkpoint.keep=3"]
    run_worker(load_config(TINY, over), checkpoint_dir=str(tmp_path), quiet=True)
    latest = tmp_path / "step_00000004" / "rank_00000.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])                   # truncated
    messages = []
    found = ckpt.find_latest(str(tmp_path), log=messages.append)
    assert found.endswith("step_00000002")
    assert len(messages) == 1 and "step_00000004" in messages[0] and "checksum" in messages[0]
    os.makedirs(tmp_path / "step_00000006.tmp")                    # an interrupted write is ignored
    assert ckpt.find_latest(str(tmp_path), log=messages.append).endswith("step_00000002")


def test_ddp_two_processes_match_one_and_survive_a_killed_rank(tmp_path):
    """One launch of 2 gloo processes (DDP): rank 1 is SIGKILLed at step 5, torchrun restarts both,
    they resume from the step-4 checkpoint, and every logged loss equals the single-process run."""
    over = ["parallel.global_batch_size=8", "parallel.micro_batch_size=2", "seq_len=64", "training.steps=8",
            "training.eval_every=0", "training.eval_batches=1", "parallel.implementation=torch",
            "checkpoint.every_steps=4"]
    single = run_worker(load_config(TINY, over + ["cluster.num_gpus=1"]), quiet=True)
    args = ["train", TINY, "--metrics", str(tmp_path / "m.jsonl"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--max-restarts", "1", "--quiet"]
    for item in over + ["faults.kill=[{rank: 1, step: 5}]"]:
        args += ["--set", item]
    proc = cli(*args)
    assert "killed at step 5" in proc.stderr
    records = read(tmp_path / "m.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    for a, b in zip(records, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_eval_and_generate_read_a_checkpoint(tmp_path):
    run_worker(load_config(TINY, FAST + ["training.steps=3"]), checkpoint_dir=str(tmp_path), quiet=True)
    out = json.loads(cli("eval", str(tmp_path), "--json").stdout)
    assert out["n_params"] == 262_720 and out["params_bytes"] == 4 * 262_720
    assert out["perplexity"] == pytest.approx(2.718281828 ** out["val_loss"], rel=1e-6)
    text = cli("generate", str(tmp_path), "--prompt", "The for statement", "--max-new-tokens", "12").stdout
    assert text.startswith("The for statement") and len(text) > len("The for statement")
    bad = cli("eval", str(tmp_path / "nothing"), check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: checkpoint not found")
    for command in (["eval", TINY], ["generate", TINY, "--prompt", "x"]):     # a config where the folder goes
        bad = cli(*command, check=False)
        assert bad.returncode == 2 and bad.stderr == (
            f"error: checkpoint {TINY} is a file; give the folder `train --checkpoint-dir` wrote\n")
