"""Graded tests for the llama_basics exercises (labs/exercises/llama_basics.py), points per test case.

Checked against published parameter counts, the real PyTorch model, and closed forms written here.
"""

from __future__ import annotations

import random

import pytest

LLAMA_7B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, vocab_size=32000)
LLAMA2_70B = dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672, vocab_size=32000)
LLAMA3_8B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=128256)
TINY = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=512)


# Exercise 1.1: llama_params -----------------------------------------------------------------------------

@pytest.mark.points(3, exercise="1.1")
@pytest.mark.parametrize("shape,expected", [(LLAMA_7B, 6_738_415_616), (LLAMA2_70B, 68_976_648_192),
                                            (LLAMA3_8B, 8_030_261_248)])
def test_llama_params_published(exercise, shape, expected):
    """The counts Meta's checkpoints have (sum of numel over the state dict): whole numbers."""
    got = exercise.llama_params(**shape)
    assert got == expected and isinstance(got, int)


@pytest.mark.points(2, exercise="1.1")
@pytest.mark.parametrize("tie", [False, True])
def test_llama_params_matches_the_torch_model(exercise, tie):
    from llama_course.core.model import build_model
    from simulator.config import load_config

    cfg = load_config({"model": {"preset": "tiny", "tie_embeddings": tie}, "seq_len": 32})
    model = build_model(cfg)
    real = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert exercise.llama_params(**TINY, tie_embeddings=tie) == real


# Exercise 1.2: train_flops_per_token --------------------------------------------------------------------

def _flops(dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, seq_len):
    kv = n_kv_heads * dim // n_heads
    n_matmul = n_layers * (2 * dim * dim + 2 * dim * kv + 3 * dim * ffn_dim) + vocab_size * dim
    return 6 * n_matmul + 12 * n_layers * seq_len * dim


@pytest.mark.points(3, exercise="1.2")
@pytest.mark.parametrize("shape,seq", [(LLAMA_7B, 2048), (LLAMA2_70B, 4096), (TINY, 128), (LLAMA3_8B, 8192)])
def test_train_flops_per_token(exercise, shape, seq):
    assert exercise.train_flops_per_token(**shape, seq_len=seq) == pytest.approx(_flops(**shape, seq_len=seq))


@pytest.mark.points(1, exercise="1.2")
def test_train_flops_near_6n_for_short_sequences(exercise):
    """LLaMA-7B at s = 2048: attention adds ~ 12 l s d / 6 N ~ 8 % to the 6 N rule of thumb."""
    f = exercise.train_flops_per_token(**LLAMA_7B, seq_len=2048)
    ratio = f / (6 * 6_738_415_616)
    assert 1.05 < ratio < 1.10


# Exercise 1.3: training_state_bytes ---------------------------------------------------------------------

@pytest.mark.points(2, exercise="1.3")
@pytest.mark.parametrize("precision,optimizer,per", [("fp32", "adamw", (4, 4, 8)), ("bf16", "adamw", (2, 2, 12)),
                                                     ("fp16", "adamw", (2, 2, 12)), ("fp32", "sgd", (4, 4, 4)),
                                                     ("bf16", "sgd", (2, 2, 8))])
def test_training_state_bytes(exercise, precision, optimizer, per):
    n = 6.7e9
    got = exercise.training_state_bytes(n, precision, optimizer)
    assert got["params"] == pytest.approx(per[0] * n)
    assert got["grads"] == pytest.approx(per[1] * n)
    assert got["optimizer"] == pytest.approx(per[2] * n)
    assert got["total"] == pytest.approx(sum(per) * n)


@pytest.mark.points(1, exercise="1.3")
def test_training_state_llama7b_does_not_fit_one_a100(exercise):
    """16 bytes/param: LLaMA-7B needs ~108 GB of state before any activation, more than an 80 GB A100."""
    total = exercise.training_state_bytes(6_738_415_616, "bf16", "adamw")["total"]
    assert total == pytest.approx(16 * 6_738_415_616) and total > 80 * 2**30


@pytest.mark.points(1, exercise="1.3")
@pytest.mark.parametrize("args", [(1e6, "int3", "adamw"), (1e6, "fp32", "adagrad")])
def test_training_state_rejects_unknown(exercise, args):
    with pytest.raises(ValueError):
        exercise.training_state_bytes(*args)


# Exercise 1.4: throughput_metrics -----------------------------------------------------------------------

@pytest.mark.points(2, exercise="1.4")
def test_throughput_metrics_random(exercise):
    rng = random.Random(14)
    for _ in range(20):
        t, g, s = rng.uniform(0.01, 20), rng.choice([8, 256, 2048]), rng.choice([128, 2048, 4096])
        fpt, n, peak = rng.uniform(1e6, 1e12), rng.choice([1, 8, 2048]), rng.uniform(1e11, 1e15)
        got = exercise.throughput_metrics(t, g, s, fpt, n, peak)
        tok = g * s / t
        assert got["tokens_per_s"] == pytest.approx(tok)
        assert got["tokens_per_s_per_device"] == pytest.approx(tok / n)
        assert got["model_flops_per_s"] == pytest.approx(tok * fpt)
        assert got["mfu"] == pytest.approx(tok * fpt / (n * peak))


@pytest.mark.points(1, exercise="1.4")
def test_throughput_metrics_llama_paper(exercise):
    """LLaMA-65B: 380 tokens/s/GPU on 2048 A100s (bf16 peak 312 TFLOP/s) is an MFU of about 0.5."""
    fpt = 6 * 65.2e9                          # the paper's own rule of thumb, attention left out
    step = 2048 * 2048 / (380 * 2048)         # a 4M-token batch of 2048 x 2048 at 380 tokens/s/GPU
    got = exercise.throughput_metrics(step, 2048, 2048, fpt, 2048, 312e12)
    assert got["tokens_per_s_per_device"] == pytest.approx(380)
    assert 0.45 < got["mfu"] < 0.50
    small = exercise.throughput_metrics(0.5, 1, 1, 1.0, 1, 0.5)        # any units: a peak below 1 is a peak
    assert small["tokens_per_s"] == pytest.approx(2.0) and small["mfu"] == pytest.approx(4.0)


@pytest.mark.points(1, exercise="1.4")
@pytest.mark.parametrize("args", [(0, 8, 128, 1e6, 1, 1e12), (1, 8, 128, 1e6, 0, 1e12), (1, 8, 128, 1e6, 1, 0)])
def test_throughput_metrics_rejects(exercise, args):
    with pytest.raises(ValueError):
        exercise.throughput_metrics(*args)


# Exercise 1.5: pack_documents ---------------------------------------------------------------------------

@pytest.mark.points(2, exercise="1.5")
def test_pack_documents_small(exercise):
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]          # stream: 1 2 3 0 4 5 0 6 7 8 9 0 (12 tokens)
    assert exercise.pack_documents(docs, 3, 0) == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert exercise.pack_documents(docs, 4, 0) == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]
    assert exercise.pack_documents([[1, 2, 3]], 1, 0) == [[1, 2], [3, 0]]          # one-token inputs


@pytest.mark.points(2, exercise="1.5")
def test_pack_documents_matches_the_runtime(exercise):
    import numpy as np

    from llama_course.core.data import pack

    rng = random.Random(15)
    docs = [[rng.randrange(1, 500) for _ in range(rng.randrange(1, 90))] for _ in range(60)]
    stream = np.array([t for d in docs for t in d + [511]])
    for seq_len in (7, 32, 127):
        assert exercise.pack_documents(docs, seq_len, 511) == pack(stream, seq_len).tolist()


@pytest.mark.points(1, exercise="1.5")
def test_pack_documents_rejects(exercise):
    with pytest.raises(ValueError):
        exercise.pack_documents([[1, 2]], 0, 0)


# Exercise 1.6: shard_batch ------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="1.6")
@pytest.mark.parametrize("g,dp,mb", [(16, 2, 4), (16, 4, 2), (12, 3, 1), (8, 1, 8)])
def test_shard_batch(exercise, g, dp, mb):
    batch = list(range(100, 100 + g))
    shards = [exercise.shard_batch(batch, r, dp, mb) for r in range(dp)]
    for r, micro in enumerate(shards):
        assert len(micro) == g // dp // mb and all(len(m) == mb for m in micro)
        assert [i for m in micro for i in m] == batch[r * g // dp:(r + 1) * g // dp]
    assert sorted(i for s in shards for m in s for i in m) == batch       # every sequence exactly once


@pytest.mark.points(1, exercise="1.6")
@pytest.mark.parametrize("g,r,dp,mb", [(16, 0, 3, 1), (16, 0, 2, 3), (16, 2, 2, 4), (16, -1, 2, 4), (16, 0, 2, 0),
                                     (16, 0, 0, 4)])
def test_shard_batch_rejects(exercise, g, r, dp, mb):
    with pytest.raises(ValueError):
        exercise.shard_batch(list(range(g)), r, dp, mb)


# Exercise 1.7: global_mean_loss on 2 gloo ranks ---------------------------------------------------------

@pytest.mark.points(3, exercise="1.7")
def test_global_mean_loss_weights_by_tokens(exercise):
    """Rank 0 holds 6 tokens, rank 1 holds 2: the mean over all 8, not the mean of the two means."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_llama_basics as workers

    from llama_course.core.testing import spawn

    results = spawn(workers.check_global_mean_loss, 2, exercise.__name__, timeout=90)
    every_token = workers.TOKENS[0] + workers.TOKENS[1]
    expected = sum(every_token) / len(every_token)
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["loss"] == pytest.approx(expected, rel=1e-12), f"rank {rank}: {out['loss']} != {expected}"
        used = {k: b for k, b in out["wire"]["bytes"].items() if b}
        assert set(used) == {"all_reduce"} and used["all_reduce"] <= 16, \
            f"rank {rank}: {used} on the wire; two float64 numbers all-reduced are 16 bytes"
