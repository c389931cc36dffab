"""The data pipeline: built-in corpus, cached tokenization, held-out split, shards, packing, sharding."""

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_course.core import data
from llama_course.core.data import (
    BatchSampler,
    builtin_documents,
    get_batch,
    load_tokens,
    pack,
    read_shard,
    split_documents,
    tokenize_corpus,
    val_batches,
    write_shards,
)
from simulator.config import Config, ConfigError


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(shared_cache, monkeypatch):
    monkeypatch.setenv("LLAMA_COURSE_CACHE", str(shared_cache))
    return shared_cache


def config(corpus="builtin", vocab_size=512, seq_len=64, val_fraction=0.05):
    cfg = Config()
    cfg.data.corpus, cfg.data.val_fraction = str(corpus), val_fraction
    cfg.model.vocab_size, cfg.seq_len = vocab_size, seq_len
    return cfg


# ---- corpus and tokens ---------------------------------------------------------------------------------
def test_builtin_corpus_is_real_english_and_fixed():
    docs = builtin_documents()
    assert docs == builtin_documents() and len(docs) > 300
    assert sum(map(len, docs)) > 500_000
    text = " ".join(docs)
    assert text.count(" the ") > 5000 and "for" in text and "json.dumps" in text


def test_builtin_corpus_does_not_depend_on_hash_seed():
    code = "from llama_course.core.data import builtin_documents, fingerprint; print(fingerprint(builtin_documents()))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == data.fingerprint(builtin_documents())


def test_load_builtin_tokens(cache):
    d = load_tokens(config())
    docs = builtin_documents()
    assert d.vocab_size == d.tokenizer.vocab_size == 512 and d.eot_id == 511
    assert d.train.dtype == np.uint16 and d.train.ndim == 1 and int(d.train.max()) < 512
    assert d.n_documents == len(docs)
    # documents are joined by end-of-text, and every document lands in exactly one split
    n_train, n_val = np.count_nonzero(d.train == d.eot_id), np.count_nonzero(d.val == d.eot_id)
    assert n_train + n_val == len(docs) and n_val >= 1 and d.train[-1] == d.val[-1] == d.eot_id
    assert 0.03 < len(d.val) / (len(d.train) + len(d.val)) < 0.06
    mask = split_documents(docs, 0.05)
    first_train, first_val = docs[int(np.flatnonzero(~mask)[0])], docs[int(np.flatnonzero(mask)[0])]
    assert d.tokenizer.decode(d.train[: np.flatnonzero(d.train == d.eot_id)[0]]) == first_train
    assert d.tokenizer.decode(d.val[: np.flatnonzero(d.val == d.eot_id)[0]]) == first_val


def test_second_load_reads_the_cache(cache, monkeypatch):
    first = load_tokens(config())
    assert sorted(p.suffix for p in cache.iterdir() if not p.name.endswith(".lock")) == [".json", ".npz"]

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(data.BPETokenizer, "train", no_training)
    again = load_tokens(config())
    assert np.array_equal(first.train, again.train) and again.tokenizer == first.tokenizer
    assert load_tokens(config(val_fraction=0.2)).val.size > 3 * first.val.size  # same cache, other split


def _build_in_child(args):
    cache, log = args
    os.environ["LLAMA_COURSE_CACHE"] = cache
    real = data._build

    def counted(*a):
        with open(log, "a") as f:
            f.write("build\n")
        return real(*a)

    data._build = counted
    d = tokenize_corpus(["some text about cats", "other text about dogs"] * 50, 300, 0.1)
    return d.train.tobytes(), d.val.tobytes()


def test_concurrent_processes_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".tmp-half-written").write_bytes(b"\x93NUMPY")  # debris of a killed writer
    with ctx.Pool(3) as pool:
        results = pool.map(_build_in_child, [(str(tmp_path / "c"), str(tmp_path / "log"))] * 3)
    assert results[0] == results[1] == results[2]
    assert (tmp_path / "log").read_text() == "build\n"


def test_text_corpora(cache, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(("A paragraph of text that keeps going. " * 10 + "\n\n") * 30)
    d = load_tokens(config(book, seq_len=16, val_fraction=0.1))
    assert np.count_nonzero(d.train == d.eot_id) + np.count_nonzero(d.val == d.eot_id) == 30
    folder = tmp_path / "folder"
    (folder / "deep").mkdir(parents=True)
    for i in range(5):
        (folder / "deep" / f"{i}.txt").write_text(f"Document number {i}.\n\nStill document {i}. " * 40)
    assert data.text_documents(folder)[0].startswith("Document number 0.\n\nStill")
    d = load_tokens(config(folder, seq_len=16, val_fraction=0.2))
    assert d.n_documents == 5 and np.count_nonzero(d.val == d.eot_id) == 1


def test_config_errors(cache, tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.corpus: .*nowhere"):
        load_tokens(config(tmp_path / "nowhere"))
    (tmp_path / "one.txt").write_text("just one paragraph")
    with pytest.raises(ConfigError, match=r"^data\.corpus: .*1 document"):
        load_tokens(config(tmp_path / "one.txt"))
    with pytest.raises(ConfigError, match=r"^seq_len: "):
        load_tokens(config(seq_len=10_000_000))
    with pytest.raises(ConfigError, match=r"^data\.val_fraction: "):
        load_tokens(config(seq_len=30_000, val_fraction=0.01))
    with pytest.raises(ConfigError, match=r"^model\.vocab_size: "):
        load_tokens(config(vocab_size=200))


# ---- shards --------------------------------------------------------------------------------------------
def test_shards_round_trip_and_split(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 999, 10_000)
    tokens[rng.choice(10_000, 40, replace=False)] = 999  # end-of-text between documents
    paths = write_shards(tokens, tmp_path / "s", 3000, vocab_size=1000, eot_id=999)
    assert [p.name for p in paths] == [f"shard_{i:05d}.bin" for i in range(4)]
    shard, meta = read_shard(paths[0])
    assert isinstance(shard, np.memmap) and shard.dtype == np.uint16 and len(shard) == 3000
    assert meta == {"vocab_size": 1000, "eot_id": 999, "n_tokens": 3000}
    assert os.path.getsize(paths[0]) == 32 + 2 * 3000

    d = load_tokens(config(tmp_path / "s", vocab_size=1000, seq_len=16, val_fraction=0.1))
    assert d.tokenizer is None and d.vocab_size == 1000 and d.eot_id == 999
    assert np.array_equal(np.concatenate([d.train, d.val]), tokens)
    first_eot = 8999 + int(np.flatnonzero(tokens[8999:] == 999)[0])
    assert len(d.train) == first_eot + 1 and d.train[-1] == 999  # cut just after an end-of-text

    with pytest.raises(ConfigError, match=r"^model\.vocab_size: 512 .*1000"):
        load_tokens(config(tmp_path / "s", vocab_size=512))


def test_one_shard_stays_memory_mapped(tmp_path):
    big = np.arange(70_000) % 70_000  # needs uint32
    write_shards(big, tmp_path, 10**6)
    d = load_tokens(config(tmp_path / "shard_00000.bin", vocab_size=70_000, seq_len=16))
    assert isinstance(d.train, np.memmap) and d.train.dtype == np.uint32 and d.eot_id is None
    assert len(d.val) == 3500 and np.array_equal(d.val, big[-3500:])
    (tmp_path / "bad.bin").write_bytes(b"not a shard at all, no header here")
    with pytest.raises(ConfigError, match=r"^data\.corpus: .*bad\.bin"):
        load_tokens(config(tmp_path / "bad.bin"))


# ---- packing and batches -------------------------------------------------------------------------------
def test_pack_is_a_view_with_shifted_targets():
    tokens = np.arange(103, dtype=np.uint16)
    packed = pack(tokens, 9)
    assert packed.shape == (10, 10) and np.shares_memory(packed, tokens)
    x, y = get_batch(packed, [3, 0])
    assert x.dtype == y.dtype == torch.long and x.shape == (2, 9) and x.is_contiguous()
    assert x[0].tolist() == list(range(30, 39)) and y[0].tolist() == list(range(31, 40))
    assert x[1, 0] == 0


def test_val_batches_are_fixed():
    packed = pack(np.arange(1000), 9)  # 100 sequences
    batches = val_batches(packed, 8, 3)
    assert [b[0].shape[0] for b in batches] == [8, 8, 8] and batches[2][0][0, 0] == 160
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, val_batches(packed, 8, 3)))
    assert [b[0].shape[0] for b in val_batches(packed, 40, 5)] == [40, 40, 20]


layouts = st.tuples(st.integers(1, 60), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4),
                    st.integers(0, 2**31 - 1))


@settings(max_examples=100, deadline=None)
@given(layouts, st.integers(0, 30))
def test_shards_make_up_the_global_batch(layout, step):
    n, dp, mb, accum, seed = layout
    sampler = BatchSampler(n, dp * mb * accum, seed)
    parts = [sampler.shard(step, r, dp, mb) for r in range(dp)]
    assert all(len(p) == accum and all(len(m) == mb for m in p) for p in parts)
    assert np.array_equal(np.concatenate([m for p in parts for m in p]), sampler.global_batch(step))
    other = BatchSampler(n, dp * mb * accum, seed)  # same order in a fresh process (resume, other ranks)
    assert np.array_equal(other.global_batch(step), sampler.global_batch(step))


@settings(max_examples=100, deadline=None)
@given(layouts)
def test_each_epoch_sees_every_sequence_once(layout):
    n, dp, mb, accum, seed = layout
    g = dp * mb * accum
    sampler = BatchSampler(n, g, seed)
    steps = -(-3 * n // g)  # enough steps to cover three epochs
    seen = np.concatenate([m for s in range(steps) for r in range(dp) for m in sampler.shard(s, r, dp, mb)])
    for epoch in range(3):
        assert sorted(seen[epoch * n: (epoch + 1) * n].tolist()) == list(range(n))
    if n % g == 0:  # aligned epochs: within a step no sequence appears twice
        assert all(len(set(sampler.global_batch(s).tolist())) == g for s in range(steps))


def test_epochs_and_seeds_reshuffle():
    a, b = BatchSampler(1000, 100, 0), BatchSampler(1000, 100, 1)
    assert not np.array_equal(a.global_batch(0), b.global_batch(0))
    assert not np.array_equal(a.global_batch(0), a.global_batch(10))  # epoch 1 is a new permutation
    with pytest.raises(ValueError):
        a.shard(0, 0, 3, 1)  # 100 sequences do not split over 3 ranks


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200), st.lists(st.floats(0, 10), min_size=1, max_size=8), st.integers(0, 20))
def test_uneven_shares(g, weights, step):
    if sum(weights) == 0:
        weights[0] = 1.0
    sampler = BatchSampler(97, g, 3)
    shares = sampler.shares(step, weights)
    assert np.array_equal(np.concatenate(shares), sampler.global_batch(step))
    for share, w in zip(shares, weights):
        assert abs(len(share) - g * w / sum(weights)) < 1


def test_shares_follow_speed():
    sizes = [len(s) for s in BatchSampler(100, 64, 0).shares(0, [1, 1, 2, 0])]
    assert sizes == [16, 16, 32, 0]
