"""Byte-level BPE: exact round trip, training equal to the textbook algorithm, files, determinism."""

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_course.core.tokenizer import EOT, PATTERN, BPETokenizer

SAMPLE = [
    "The quick brown fox jumps over the lazy dog. The dog doesn't mind; the fox is quick.",
    "A for loop iterates over the items of any sequence, in the order that they appear in the sequence.",
    "Tokens: 12345 and 3.14159 -- and `code_like_names = dict()` with    spaces.\n\n\tTabbed line.",
    "Unicode: naïve café, Grüße, 東京, emoji 🎉🎉 and ordinary words the the the.",
]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(SAMPLE * 3, 400)


def reference_train(texts, vocab_size):
    """The textbook algorithm: recount every pair from scratch before each merge."""
    counts = Counter(w for t in texts for w in re.findall(PATTERN, t))
    words = {tuple(w.encode()): c for w, c in counts.items()}
    merges = []
    while len(merges) < vocab_size - 257:
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        new_id = 256 + len(merges)
        merges.append(best)
        merged = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def test_training_matches_the_textbook_algorithm():
    texts = SAMPLE + ["aaaa aaa aa a", "abababab abab"]  # overlapping pairs such as (a, a)
    assert BPETokenizer.train(texts, 340).merges == reference_train(texts, 340)


def test_vocabulary_layout(tok):
    assert tok.vocab_size == 400 and tok.eot_id == 399 and len(tok.merges) == 143
    assert max(tok.encode(" ".join(SAMPLE))) < tok.eot_id
    assert tok.token_bytes(tok.eot_id) == EOT.encode()
    assert tok.token_bytes(256) == tok.token_bytes(tok.merges[0][0]) + tok.token_bytes(tok.merges[0][1])


def test_merges_compress_frequent_words(tok):
    assert len(tok.encode(" the")) == 1
    assert len(tok.encode(SAMPLE[0])) < len(SAMPLE[0].encode()) / 2


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_string(tok, text):
    assert "".join(re.findall(PATTERN, text)) == text  # the pre-tokenizer loses nothing
    ids = tok.encode(text)
    assert all(0 <= i < tok.eot_id for i in ids)
    assert tok.decode(ids) == text


def test_round_trip_edge_cases(tok):
    for text in ["", " ", "\n\n\n", "\ud800 lone surrogate", "a\x00b", EOT, "x" * 5000]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eot_id not in tok.encode(f"one{EOT}two")  # text cannot forge a document boundary


def test_decode_is_total(tok):
    assert tok.decode([tok.eot_id]) == EOT
    assert tok.decode([0xE6]) == "\ufffd"  # a character cut in the middle
    assert tok.decode([tok.vocab_size + 5]) == "\ufffd"  # an id past the vocabulary (padded model)
    assert tok.decode(tok.encode_documents(["a", "b"])) == f"a{EOT}b{EOT}"


def test_save_load(tok, tmp_path):
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    again = BPETokenizer.load(path)
    assert again == tok and again.eot_id == tok.eot_id
    assert again.encode(SAMPLE[3]) == tok.encode(SAMPLE[3])
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temporary file left behind


def test_training_is_deterministic_and_validated():
    assert BPETokenizer.train(SAMPLE, 300).merges == BPETokenizer.train(list(SAMPLE), 300).merges
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train(SAMPLE, 256)
    small = BPETokenizer.train(["ab"], 1000)  # runs out of pairs: a smaller vocabulary, still valid
    assert small.merges == [(97, 98)] and small.eot_id == 257
