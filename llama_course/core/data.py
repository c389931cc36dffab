"""The data pipeline: text -> tokens -> fixed-length sequences -> each rank's share of every step.

Three stages, each with its cost (N corpus tokens, L = seq_len, G = global batch, dp ranks):

1. **Tokenize** (once per corpus, cached). Documents are encoded with a byte-level BPE learned from the corpus
   (`llama_course.core.tokenizer`; from all documents, held-out ones included, as production tokenizers are)
   and joined, each followed by the end-of-text token, into one 1-D array. Pure Python, O(N) dictionary look-ups at a few million characters per second:
   half a second for the built-in corpus (then read from the cache), a minute or more for 100 MB of
   text -- which is why real pipelines tokenize offline into binary shards (`write_shards`) that every rank
   memory-maps: no parsing at start-up, the operating system pages in only what is read, and all ranks on a
   node share one copy in the page cache. Validation is held out by whole documents (`split_documents`),
   so no held-out sentence was half seen in training.
2. **Pack** (`pack`, free). The stream is cut into non-overlapping windows of L + 1 tokens, a reshape with
   no copy: row i gives inputs `[:, :-1]` and next-token targets `[:, 1:]`. Nothing is padded, so every
   position trains; a window may hold the end of one document, end-of-text and the start of the next, and
   attention is not masked there (the GPT and LLaMA 1/2 recipe; LLaMA 3 masks across documents). The leftover tail, fewer than L + 1 tokens, is dropped.
3. **Shard** (`BatchSampler`, free: it moves indices, never data). Each epoch is a permutation drawn from
   (seed, epoch); step k takes the next G sequences of that stream, and data-parallel rank r takes the
   contiguous slice [r G/dp, (r+1) G/dp) of them, cut into micro-batches of `micro_batch_size`. Every rank
   computes the same permutation locally, so sharding sends no bytes, and because the global batch of step
   k does not depend on dp or the micro-batch size, every layout trains on the same sequences: the
   single-process run is the oracle for all of them. `shares` gives uneven slices for load balancing.

Per step a rank reads G/dp x (L + 1) tokens (2 bytes each as uint16): about 8 MB for a 7B-scale step of
G = 2048, L = 2048 on dp = 1 -- nothing beside the ~6 x params x tokens FLOPs of the step, so input is rarely
the bottleneck once tokenized (seed questions 13 and 23 measure throughput in tokens/s, which is G x L per
step time; question 17: if data loading shows in a profile, it is tokenizing on the fly, fix it offline).
Seed question 14 ("data preprocessing: cleaning, augmentation, normalisation") is image-classification
talk; for language models preprocessing means deduplication, filtering, tokenizing, packing, and a
deterministic, resumable order -- what this module does.

`data.corpus`:
  - `builtin`: CPython's own documentation: the help topics of `pydoc_data.topics` (the "Python Language
    Reference" chapters that `help('FOR')` shows) and the docstrings of a fixed list of standard-library
    modules; one topic or one docstring is one document. Ships with every Python: nothing to download.
  - a `.txt` file: documents are its paragraphs (blank-line separated). A folder of `.txt` files (searched
    recursively, sorted by path): each file is one document; a folder with a single file is split as that file.
  - a folder of `*.bin` token shards (or one `.bin` file): see `write_shards`. The held-out documents are the
    last ones (cut at an end-of-text token), so a single shard stays a zero-copy memory map.

    llama-course train configs/tiny.yaml --set data.corpus=builtin
    python -c "from llama_course.core.data import *; from simulator.config import Config; print(load_tokens(Config()))"
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_course.core.corpus import BUILTIN_MODULES, builtin_documents, text_documents  # noqa: F401 (the data API)
from llama_course.core.token_shards import (  # noqa: F401 (the data API)
    SHARD_HEADER,
    SHARD_MAGIC,
    _shard_files,
    read_shard,
    write_shards,
)
from llama_course.core.tokenizer import PATTERN, BPETokenizer, write_atomic
from simulator.config import ConfigError

CACHE_ENV = "LLAMA_COURSE_CACHE"
TOKENIZER_TRAIN_CHARS = 8_000_000
"""The tokenizer learns from the first documents up to this many characters (the whole built-in corpus)."""
_PIPELINE_VERSION = "1"  # bump when documents, splitting or tokenizing change: old cache entries go stale


@dataclass
class TokenData:
    """A tokenized corpus, split into training and held-out validation tokens."""

    train: np.ndarray
    """Training tokens, 1-D (uint16 below 65,536 ids), documents joined by end-of-text."""
    val: np.ndarray
    """Held-out tokens: whole documents never seen in training."""
    tokenizer: BPETokenizer | None
    """The tokenizer that made them; None for pre-tokenized shards."""
    vocab_size: int
    """Ids the tokens may take: the tokenizer's vocabulary, or the shards' header value."""
    eot_id: int | None = None
    """End-of-text id between documents (None for shards written without one)."""
    n_documents: int = 0
    """Documents in the corpus (train + val); 0 when unknown (shards without end-of-text)."""

    def __repr__(self) -> str:
        return (f"TokenData(train={len(self.train):,} tokens, val={len(self.val):,} tokens, "
                f"vocab_size={self.vocab_size}, documents={self.n_documents})")


def load_tokens(cfg) -> TokenData:
    """Tokens for a run described by `cfg` (a `simulator.config.Config`). Raises ConfigError on bad input."""
    corpus = cfg.data.corpus
    if corpus == "synthetic":
        return synthetic_tokens(cfg.model.vocab_size, cfg.training.seed)
    if corpus != "builtin" and not os.path.exists(corpus):
        raise ConfigError(f"data.corpus: '{corpus}' does not exist (use 'builtin', a .txt file or folder, "
                          "or a folder of .bin token shards)")
    if corpus != "builtin" and _shard_files(corpus):
        data = _load_shard_tokens(corpus, cfg.data.val_fraction)
        if data.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the token shards' "
                              f"vocabulary {data.vocab_size} in {corpus}")
    else:
        if cfg.model.vocab_size < 257:
            raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is below 257, the byte-level "
                              "tokenizer's 256 bytes + end-of-text")
        documents = builtin_documents() if corpus == "builtin" else text_documents(corpus)
        if len(documents) < 2:
            raise ConfigError(f"data.corpus: '{corpus}' holds {len(documents)} document(s); at least 2 are "
                              "needed to hold one out for validation")
        data = tokenize_corpus(documents, cfg.model.vocab_size, cfg.data.val_fraction)
    need = cfg.seq_len + 1
    if len(data.train) < need:
        raise ConfigError(f"seq_len: {cfg.seq_len} is too long: the training split of '{corpus}' holds "
                          f"{len(data.train)} tokens")
    if len(data.val) < need:
        raise ConfigError(f"data.val_fraction: {cfg.data.val_fraction} of '{corpus}' holds {len(data.val)} "
                          f"tokens, fewer than one sequence of seq_len + 1 = {need}")
    return data


def synthetic_tokens(vocab_size: int, seed: int = 0, n_tokens: int = 1 << 22) -> TokenData:
    """Random tokens (Zipf-like frequencies) for throughput runs at any vocabulary (`data.corpus: synthetic`).

    Nothing to learn beyond the unigram frequencies: use it to measure speed (GPU checks of a 32k-vocab
    model), never to judge a model.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab_size + 1)
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    tokens = rng.choice(vocab_size, size=n_tokens, p=weights / weights.sum()).astype(dtype)
    cut = n_tokens - n_tokens // 20
    return TokenData(train=tokens[:cut], val=tokens[cut:], tokenizer=None, vocab_size=vocab_size)


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """(n_seq, seq_len + 1) non-overlapping windows of `tokens` (a view, no copy); the tail is dropped."""
    n = len(tokens) // (seq_len + 1)
    return np.asarray(tokens)[: n * (seq_len + 1)].reshape(n, seq_len + 1)


class BatchSampler:
    """Which sequences each step, rank and micro-batch trains on; deterministic from (seed, step).

    The sequence order is an endless stream: epoch e is `rng(seed, e).permutation(n_sequences)`, the epochs
    follow one another, and step k takes stream positions [k G, (k+1) G). Each epoch therefore shows every
    sequence exactly once, whatever G, dp and the micro-batch size are (a step may straddle two epochs).
    """

    def __init__(self, n_sequences: int, global_batch_size: int, seed: int = 0):
        if n_sequences < 1 or global_batch_size < 1:
            raise ValueError(f"need n_sequences >= 1 and global_batch_size >= 1, got {n_sequences}, "
                             f"{global_batch_size}")
        self.n_sequences = int(n_sequences)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> float:
        return self.n_sequences / self.global_batch_size

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch `epoch`: a permutation of range(n_sequences) drawn from (seed, epoch)."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_sequences)
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def global_batch(self, step: int) -> np.ndarray:
        """The G sequence indices of optimizer step `step` (steps continue across epochs)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, g = self.n_sequences, self.global_batch_size
        start, stop = step * g, (step + 1) * g
        parts = []
        for epoch in range(start // n, (stop - 1) // n + 1):
            lo, hi = max(start, epoch * n), min(stop, (epoch + 1) * n)
            parts.append(self.epoch_permutation(epoch)[lo - epoch * n: hi - epoch * n])
        return np.concatenate(parts)

    def shard(self, step: int, dp_rank: int, dp: int, micro_batch_size: int) -> list[np.ndarray]:
        """Rank `dp_rank`'s micro-batches of step `step`: its contiguous G/dp slice, cut into micro-batches."""
        g = self.global_batch_size
        if dp < 1 or not 0 <= dp_rank < dp:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, dp={dp})")
        if g % dp or micro_batch_size < 1 or (g // dp) % micro_batch_size:
            raise ValueError(f"global batch {g} does not split into dp {dp} x micro-batches of {micro_batch_size}")
        per_rank = g // dp
        mine = self.global_batch(step)[dp_rank * per_rank: (dp_rank + 1) * per_rank]
        return [mine[i: i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]

    def shares(self, step: int, weights) -> list[np.ndarray]:
        """Uneven shares of step `step` (load balancing): rank i gets about G x weights[i] / sum(weights)
        sequences, rounded by largest remainder (ties to the lower rank); together exactly the global batch,
        in order. A faster worker given a larger weight finishes its share at the same time as the others."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative, finite and not all zero, got {list(weights)}")
        sizes = split_sizes(self.global_batch_size, w)
        batch = self.global_batch(step)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [batch[bounds[i]: bounds[i + 1]] for i in range(len(sizes))]


def split_sizes(total: int, weights: np.ndarray) -> list[int]:
    """Integers proportional to `weights` that sum to `total` (largest-remainder rounding)."""
    quota = total * weights / weights.sum()
    sizes = np.floor(quota).astype(np.int64)
    short = total - int(sizes.sum())
    order = sorted(range(len(weights)), key=lambda i: (-(quota[i] - sizes[i]), i))
    for i in order[:short]:
        sizes[i] += 1
    return [int(s) for s in sizes]


def get_batch(packed: np.ndarray, indices) -> tuple:
    """(x, y) LongTensors of shape (len(indices), seq_len): inputs and next-token targets."""
    import torch

    rows = np.asarray(packed[np.asarray(indices, dtype=np.int64)], dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(rows[:, :-1])), torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))


def val_batches(packed_val: np.ndarray, batch_size: int, n: int) -> list[tuple]:
    """The fixed evaluation set: up to `n` batches of the first validation sequences, in order (the last
    batch is shorter when the validation split runs out). The same every call, every rank, every run."""
    if len(packed_val) == 0:
        raise ValueError("the validation split holds no full sequence")
    rows = min(len(packed_val), batch_size * n)
    return [get_batch(packed_val, np.arange(i, min(i + batch_size, rows))) for i in range(0, rows, batch_size)]


def fingerprint(documents: list[str]) -> str:
    """sha256 of the documents (and of this pipeline's version): the cache key of a corpus."""
    h = hashlib.sha256(f"llama-course-data-{_PIPELINE_VERSION}\0{PATTERN}\0".encode())
    for doc in documents:
        b = doc.encode("utf-8", "surrogatepass")
        h.update(struct.pack("<Q", len(b)) + b)
    return h.hexdigest()


def split_documents(documents: list[str], val_fraction: float) -> np.ndarray:
    """Boolean mask of held-out documents, about `val_fraction` of the corpus's characters in whole documents.

    Documents are visited in the order of their sha256 and taken while they fit in the budget (one that
    would overshoot is skipped); at least one is held out (the smallest, if none fits) and at least one kept. A fixed, seed-free choice:
    every run on a corpus is evaluated on the same text, whatever the documents' order."""
    n = len(documents)
    digests = [hashlib.sha256(d.encode("utf-8", "surrogatepass")).digest() for d in documents]
    order = sorted(range(n), key=lambda i: (digests[i], i))
    budget = val_fraction * sum(len(d) for d in documents)
    mask = np.zeros(n, dtype=bool)
    held = taken = 0
    for i in order:
        if taken < n - 1 and held + len(documents[i]) <= budget:
            mask[i] = True
            held += len(documents[i])
            taken += 1
    if not taken:  # every document is larger than the budget: hold out the smallest
        mask[min(order, key=lambda i: len(documents[i]))] = True
    return mask


def tokenize_corpus(documents: list[str], vocab_size: int, val_fraction: float,
                    cache: str | os.PathLike | None = None) -> TokenData:
    """Train (or load) the tokenizer of `documents`, encode them (or load the encoding), split by document.

    Cached under `cache_dir()` as `<fingerprint>-v<vocab_size>.tokenizer.json` and `...tokens.npz`. The
    first process to get there builds them under a lock; the others wait and read the finished files.
    """
    directory = Path(cache) if cache is not None else cache_dir()
    key = f"{fingerprint(documents)[:24]}-v{vocab_size}"
    tok_path, tokens_path = directory / f"{key}.tokenizer.json", directory / f"{key}.tokens.npz"
    loaded = _load_cached(tok_path, tokens_path)
    if loaded is None:
        with _FileLock(directory / f"{key}.lock"):
            loaded = _load_cached(tok_path, tokens_path)  # another process may have built it meanwhile
            if loaded is None:
                loaded = _build(documents, vocab_size, tok_path, tokens_path)
    tokenizer, tokens, offsets = loaded
    if len(offsets) != len(documents) + 1:
        raise RuntimeError(f"cache entry {tokens_path} does not match the corpus; delete it")
    val_mask = split_documents(documents, val_fraction)
    train = np.concatenate([tokens[offsets[i]: offsets[i + 1]] for i in np.flatnonzero(~val_mask)])
    val = np.concatenate([tokens[offsets[i]: offsets[i + 1]] for i in np.flatnonzero(val_mask)])
    return TokenData(train, val, tokenizer, tokenizer.vocab_size, tokenizer.eot_id, len(documents))


def cache_dir() -> Path:
    """Where trained tokenizers and tokenized corpora live: $LLAMA_COURSE_CACHE, else ~/.cache/llama-course."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llama-course")


def _build(documents, vocab_size, tok_path: Path, tokens_path: Path):
    budget, sample = TOKENIZER_TRAIN_CHARS, []
    for doc in documents:
        if budget <= 0:
            break
        sample.append(doc)
        budget -= len(doc)
    tokenizer = BPETokenizer.train(sample, vocab_size)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    pieces = [np.asarray(tokenizer.encode(d) + [tokenizer.eot_id], dtype=dtype) for d in documents]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    tokens = np.concatenate(pieces)
    buffer = io.BytesIO()
    np.savez(buffer, tokens=tokens, offsets=offsets)
    write_atomic(tokens_path, buffer.getvalue())
    tokenizer.save(tok_path)  # written last: its presence means the entry is complete
    return tokenizer, tokens, offsets


def _load_cached(tok_path: Path, tokens_path: Path):
    if not (tok_path.exists() and tokens_path.exists()):
        return None
    try:
        with np.load(tokens_path) as f:
            tokens, offsets = f["tokens"], f["offsets"]
        return BPETokenizer.load(tok_path), tokens, offsets
    except (OSError, ValueError, KeyError):  # unreadable entry: rebuild it
        return None


class _FileLock:
    """An exclusive lock on a file (fcntl.flock). Where flock is unavailable (Windows) it does nothing, and
    the atomic writes alone keep readers safe: racing builders write identical files."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+")
        try:
            import fcntl
            fcntl.flock(self._f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        return self

    def __exit__(self, *exc):
        self._f.close()  # closing releases the lock


# ---- token shards (the file format: core/token_shards.py) ----
def _load_shard_tokens(corpus: str, val_fraction: float) -> TokenData:
    shards = [read_shard(p) for p in _shard_files(corpus)]
    vocab = max(meta["vocab_size"] for _, meta in shards)
    eot = shards[0][1]["eot_id"]
    tokens = shards[0][0] if len(shards) == 1 else np.concatenate([t for t, _ in shards])
    cut = max(int(len(tokens) * (1 - val_fraction)), 1)
    if eot is not None:  # move the cut forward to just past the next end-of-text: whole documents held out
        after = np.flatnonzero(np.asarray(tokens[cut - 1:]) == eot)
        cut = cut + int(after[0]) if len(after) else len(tokens)
    return TokenData(tokens[:cut], tokens[cut:], None, vocab, eot)
