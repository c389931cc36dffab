"""Token shards: a tokenized corpus as binary files every rank memory-maps (llama_course/core/data.py reads
them when `data.corpus` is a folder of `.bin` files).

A shard is a 32-byte header then raw tokens: no parsing at start-up, the operating system pages in only
what is read, and all ranks on a node share one copy in the page cache.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from llama_course.core.tokenizer import write_atomic
from simulator.config import ConfigError

SHARD_MAGIC = b"LLCTOK01"
SHARD_HEADER = struct.Struct("<8sIIiIQ")
"""32-byte little-endian header of a `.bin` shard: magic, bytes per token (2 = uint16, 4 = uint32),
vocab_size, eot_id (-1: none), reserved (0), number of tokens. The tokens follow, in that dtype."""


def write_shards(tokens, folder: str | os.PathLike, shard_tokens: int, vocab_size: int | None = None,
                 eot_id: int | None = None) -> list[Path]:
    """Write `tokens` (1-D ints) as `folder/shard_00000.bin`, ... of at most `shard_tokens` tokens each.

    Each file is a 32-byte header (`SHARD_HEADER`) then raw tokens, uint16 when vocab_size <= 65,536, else
    uint32; `np.memmap` reads them back without parsing. `vocab_size` defaults to max(tokens) + 1. Give
    `eot_id` so the validation split can end at a document boundary. Point `data.corpus` at the folder:

        data = load_tokens(cfg)                       # built-in corpus, tokenized
        write_shards(np.concatenate([data.train, data.val]), "shards/", 1_000_000, data.vocab_size, data.eot_id)
        llama-course train configs/tiny.yaml --set data.corpus=shards/
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or shard_tokens < 1:
        raise ValueError("write_shards needs a 1-D token array and shard_tokens >= 1")
    if len(tokens) and tokens.min() < 0:
        raise ValueError("token ids must be non-negative")
    vocab = int(vocab_size if vocab_size is not None else (tokens.max() + 1 if len(tokens) else 1))
    if len(tokens) and tokens.max() >= vocab:
        raise ValueError(f"token id {int(tokens.max())} is not below vocab_size {vocab}")
    dtype = np.dtype("<u2") if vocab <= 1 << 16 else np.dtype("<u4")
    folder = Path(folder)
    paths = []
    for i, start in enumerate(range(0, max(len(tokens), 1), shard_tokens)):
        chunk = tokens[start: start + shard_tokens].astype(dtype)
        header = SHARD_HEADER.pack(SHARD_MAGIC, dtype.itemsize, vocab, -1 if eot_id is None else eot_id, 0,
                                   len(chunk))
        paths.append(folder / f"shard_{i:05d}.bin")
        write_atomic(paths[-1], header + chunk.tobytes())
    return paths


def read_shard(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """A shard's tokens as a read-only np.memmap, and its header as a dict."""
    with open(path, "rb") as f:
        raw = f.read(SHARD_HEADER.size)
    if len(raw) < SHARD_HEADER.size or raw[:8] != SHARD_MAGIC:
        raise ConfigError(f"data.corpus: {path} is not a llama-course token shard (see write_shards)")
    _, itemsize, vocab, eot, _, n = SHARD_HEADER.unpack(raw)
    dtype = np.dtype("<u2") if itemsize == 2 else np.dtype("<u4")
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=SHARD_HEADER.size, shape=(n,)) if n else \
        np.zeros(0, dtype)
    return tokens, {"vocab_size": vocab, "eot_id": None if eot < 0 else eot, "n_tokens": n}


def _shard_files(corpus: str) -> list[Path]:
    path = Path(corpus)
    if path.is_file():
        return [path] if path.suffix == ".bin" else []
    return sorted(path.glob("*.bin"))
