"""Byte-level BPE, trained locally in pure Python: the tokenizer of the built-in corpus.

A language model reads integers, not text. Byte-level byte-pair encoding (GPT-2, LLaMA 3) starts from the
256 byte values, so every string -- any language, any emoji -- has an encoding and nothing is "unknown";
then it learns merges: the most frequent adjacent pair of symbols becomes a new symbol, again and again,
until the vocabulary holds V ids. Frequent words end up as one token, rare ones as several pieces.

    ids 0..255        one per byte value
    ids 256..V-2      merges, in the order they were learned (earlier = more frequent = applied first)
    id  V-1           <|endoftext|> (`eot_id`): the boundary between documents

Text is first split into pre-tokens (words with their leading space, numbers, punctuation runs, spaces) by
`PATTERN`, and merges never cross a pre-token boundary (GPT-2's rule). That is what makes training cheap:
the corpus becomes a table {pre-token: count} of a few tens of thousands of entries, and each merge only
revisits the pre-tokens that contain the merged pair (an index pair -> pre-tokens keeps them at hand, a heap
keeps the pair counts ordered).

Cost. Training: about M x (pre-tokens touched per merge) Python steps for M = V - 257 merges; seconds for
V = 4096 on the built-in corpus (see `BPETokenizer.train`). Encoding: one regex pass, then merges per
distinct pre-token, memoised, so a corpus costs about one dictionary look-up per pre-token. The result is
cached on disk by `llama_course.core.data`, so a run pays it once per corpus and vocabulary size.

    from llama_course.core.tokenizer import BPETokenizer
    tok = BPETokenizer.train(["some text", "more text"], vocab_size=300)
    tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
"""

from __future__ import annotations

import heapq
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable

EOT = "<|endoftext|>"
"""Text shown for the end-of-document token. `encode` never produces it from text (a document that
contains this string is encoded as ordinary bytes), so the boundary cannot be forged by the data."""

PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenizer written for Python's `re` (which has no \\p{L}): contractions, letters with one
leading space, numbers in groups of up to three digits, runs of other symbols, whitespace. Every character
falls in one branch, so joining the pieces gives the text back exactly."""

_SPLIT = re.compile(PATTERN)
_FORMAT = "llama-course-bpe"


class BPETokenizer:
    """A byte-level BPE tokenizer: `merges[i] = (a, b)` makes id 256 + i; `eot_id` ends a document."""

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.eot_id = 256 + len(self.merges)
        self._rank = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self._bytes = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            if not (a < len(self._bytes) and b < len(self._bytes)):
                raise ValueError(f"merge ({a}, {b}) refers to an id that does not exist yet")
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        """Ids in use: 256 bytes + merges + 1 end-of-text."""
        return self.eot_id + 1

    # ---- training ----------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn `vocab_size - 257` merges from `texts` (fewer if the texts run out of pairs).

        Deterministic: ties between equally frequent pairs go to the pair with the smaller ids, and the result
        depends only on the texts, so every rank and every machine that trains on the same texts gets the
        same tokenizer.
        """
        if vocab_size < 257:
            raise ValueError(f"vocab_size must be at least 257 (256 bytes + end-of-text), got {vocab_size}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(_SPLIT.findall(text))
        words = [list(w.encode("utf-8", "surrogatepass")) for w in counts]
        freq = list(counts.values())

        pair_count: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = {}
        for i, w in enumerate(words):
            c = freq[i]
            for pair in zip(w, w[1:]):
                pair_count[pair] = pair_count.get(pair, 0) + c
                where.setdefault(pair, set()).add(i)
        heap = [(-c, pair) for pair, c in pair_count.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 257 and heap:
            neg, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -neg or neg == 0:
                continue  # stale heap entry: the count changed since it was pushed
            new_id = 256 + len(merges)
            merges.append(pair)
            a, b = pair
            changed: set[tuple[int, int]] = set()
            for i in where.pop(pair):
                w, c = words[i], freq[i]
                if len(w) < 2:
                    continue
                merged = _merge(w, a, b, new_id)
                if len(merged) == len(w):
                    continue  # stale index entry: this word no longer holds the pair
                for old in zip(w, w[1:]):
                    pair_count[old] -= c
                    changed.add(old)
                for new in zip(merged, merged[1:]):
                    pair_count[new] = pair_count.get(new, 0) + c
                    where.setdefault(new, set()).add(i)
                    changed.add(new)
                words[i] = merged
            pair_count.pop(pair, None)
            for p in changed:
                c = pair_count.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    pair_count.pop(p, None)
        return cls(merges)

    # ---- encoding ----------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no end-of-text appended). Exact: `decode(encode(s)) == s` for every str."""
        out: list[int] = []
        cache = self._cache
        for piece in _SPLIT.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._encode_piece(piece)
                if len(cache) < 500_000:
                    cache[piece] = ids
            out.extend(ids)
        return out

    def encode_documents(self, documents: Iterable[str]) -> list[int]:
        """Documents encoded and joined, each followed by `eot_id`."""
        out: list[int] = []
        for doc in documents:
            out.extend(self.encode(doc))
            out.append(self.eot_id)
        return out

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        ids = list(piece.encode("utf-8", "surrogatepass"))
        rank = self._rank
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, 1 << 62))
            new_id = rank.get(best)
            if new_id is None:
                break
            ids = _merge(ids, best[0], best[1], new_id)
        return tuple(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`. `eot_id` shows as `EOT`; ids outside the vocabulary (a model padded past it) and
        byte sequences that are not valid UTF-8 (a sample cut mid-character) show as U+FFFD."""
        parts: list[bytes] = []
        for i in ids:
            i = int(i)
            if 0 <= i < len(self._bytes):
                parts.append(self._bytes[i])
            elif i == self.eot_id:
                parts.append(EOT.encode())
            else:
                parts.append("\ufffd".encode())
        data = b"".join(parts)
        try:
            return data.decode("utf-8", "surrogatepass")  # lone surrogates round-trip too
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes one id stands for (handy for showing how text was split)."""
        return EOT.encode() if i == self.eot_id else self._bytes[i]

    # ---- files -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": 1, "pattern": PATTERN, "eot": EOT,
                "vocab_size": self.vocab_size, "merges": [list(m) for m in self.merges]}

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temporary file + rename), so a reader never sees half a file."""
        write_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("format") != _FORMAT or d.get("pattern") != PATTERN:
            raise ValueError(f"{path}: not a llama-course BPE tokenizer of this version")
        return cls([tuple(m) for m in d["merges"]])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.merges == other.merges

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def _merge(ids: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of (a, b), left to right, by new_id."""
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (atomic on POSIX and
    Windows): concurrent readers see the old file or the new one, never a mixture."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
