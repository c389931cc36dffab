"""Graded tests for the context-parallel exercises (labs/exercises/context_parallel.py), points per test.

Each test checks against a closed form or a direct computation written here (the chunks counted by hand,
the mask from its definition, attention on the whole sequence in one process), never against the solution
or the course's runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))      # the spawned workers import these by name

from recorders import assert_ranks_finished, calls_of  # noqa: E402  (tests/exercises, on the path above)


def _head_tail(s: int, cp: int, r: int) -> list:
    n = s // (2 * cp)
    return [(r * n, (r + 1) * n), ((2 * cp - 1 - r) * n, (2 * cp - r) * n)]


# Exercise 15.1: load_balanced_chunks, shard_sequence ------------------------------------------------------

@pytest.mark.points(1, exercise="15.1")
def test_load_balanced_chunks_example(exercise):
    """The docstring's example: s = 8, cp = 2."""
    assert [tuple(c) for c in exercise.load_balanced_chunks(8, 2, 0)] == [(0, 2), (6, 8)]
    assert [tuple(c) for c in exercise.load_balanced_chunks(8, 2, 1)] == [(2, 4), (4, 6)]


@pytest.mark.points(2, exercise="15.1")
@pytest.mark.parametrize("s,cp", [(8, 1), (4, 2), (2, 1), (16, 2), (24, 3), (32, 4), (64, 8), (48, 4)])
def test_load_balanced_chunks_head_and_tail(exercise, s, cp):
    """Rank r holds chunk r and chunk 2 cp - 1 - r of 2 cp equal chunks; together the ranks cover the
    sequence once."""
    covered = []
    for r in range(cp):
        got = [tuple(c) for c in exercise.load_balanced_chunks(s, cp, r)]
        assert got == _head_tail(s, cp, r), f"s {s}, cp {cp}, rank {r}: {got}"
        covered += [p for a, b in got for p in range(a, b)]
    assert sorted(covered) == list(range(s))


@pytest.mark.points(2, exercise="15.1")
@pytest.mark.parametrize("s,cp", [(16, 2), (64, 4), (96, 3)])
def test_load_balanced_chunks_balance_the_causal_work(exercise, s, cp):
    """Under a causal mask, the query at position p reads p + 1 keys: every rank's queries read the same
    number, s (s + 1) / 2 / cp (contiguous parts would give the last rank 2 cp - 1 times the first's)."""
    work = [sum(p + 1 for a, b in exercise.load_balanced_chunks(s, cp, r) for p in range(a, b)) for r in range(cp)]
    assert work == [s * (s + 1) // 2 // cp] * cp, f"s {s}, cp {cp}: (query, key) pairs per rank {work}"


@pytest.mark.points(1, exercise="15.1")
@pytest.mark.parametrize("s,cp,rank", [(10, 2, 0), (12, 4, 1), (0, 1, 0), (-8, 2, 0), (16, 2, 2), (16, 2, -1), (16, 0, 0)])
def test_load_balanced_chunks_rejects_bad_input(exercise, s, cp, rank):
    with pytest.raises(ValueError):
        exercise.load_balanced_chunks(s, cp, rank)


@pytest.mark.points(2, exercise="15.1")
@pytest.mark.parametrize("cp,dim", [(2, 1), (4, 1), (3, 0), (2, 2)])
def test_shard_sequence(exercise, cp, dim):
    s = 2 * cp * 3
    shape = [2, 3, 4]
    shape[dim] = s
    x = torch.arange(shape[0] * shape[1] * shape[2]).reshape(shape)
    parts = []
    for r in range(cp):
        got = exercise.shard_sequence(x, cp, r, dim)
        idx = torch.tensor([p for a, b in _head_tail(s, cp, r) for p in range(a, b)])
        assert torch.equal(got, x.index_select(dim, idx)), f"cp {cp}, rank {r}, dim {dim}"
        parts.append(idx)
    assert sorted(torch.cat(parts).tolist()) == list(range(s))


@pytest.mark.points(1, exercise="15.1")
def test_shard_sequence_default_dim_is_the_sequence(exercise):
    x = torch.arange(2 * 8).reshape(2, 8)
    assert torch.equal(exercise.shard_sequence(x, 2, 1), x[:, 2:6])
    assert torch.equal(exercise.shard_sequence(x, 2, 0), x[:, [0, 1, 6, 7]])


# Exercise 15.2: causal_mask ------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="15.2")
@pytest.mark.parametrize("positions,s", [([0, 1, 6, 7], 8), ([2, 3, 4, 5], 8), ([0, 1, 2, 3, 4], 5),
                                         ([9, 0, 14, 3, 15], 16)])
def test_causal_mask(exercise, positions, s):
    q = torch.tensor(positions)
    got = torch.as_tensor(exercise.causal_mask(q, s))
    want = torch.tensor([[key <= p for key in range(s)] for p in positions])
    assert got.dtype == torch.bool and tuple(got.shape) == (len(positions), s)
    assert torch.equal(got, want), f"queries at {positions}: a query sees every key at or before it"


@pytest.mark.points(1, exercise="15.2")
def test_causal_mask_a_token_sees_itself(exercise):
    """The diagonal: without it the first token has no key at all (a softmax over nothing is NaN)."""
    q = torch.tensor([0, 5, 3])
    got = torch.as_tensor(exercise.causal_mask(q, 6))
    assert got[0, 0] and got[1, 5] and got[2, 3] and got[0].sum() == 1 and got[1].sum() == 6


@pytest.mark.points(1, exercise="15.2")
def test_causal_mask_on_global_positions(exercise):
    """Rank 1 of cp 2 holds positions 2..5 of 8: the mask must use them, not its local indices 0..3."""
    got = torch.as_tensor(exercise.causal_mask(torch.tensor([2, 3, 4, 5]), 8))
    assert got.sum() == 3 + 4 + 5 + 6, "rank 1's queries read 18 keys in all: mask on the global positions"


# Exercise 15.3: cp_gather_bytes --------------------------------------------------------------------------

@pytest.mark.points(2, exercise="15.3")
@pytest.mark.parametrize("b,s,kv,hd,tp,cp,e", [(1, 8192, 8, 128, 8, 2, 2), (1, 131072, 8, 128, 8, 16, 2),
                                                (2, 4096, 8, 128, 1, 4, 4), (1, 64, 2, 16, 2, 2, 4),
                                                (4, 32768, 16, 64, 4, 8, 1)])
def test_cp_gather_bytes(exercise, b, s, kv, hd, tp, cp, e):
    gathered, received = exercise.cp_gather_bytes(b, s, kv, hd, tp, cp, e)
    want = 2 * b * s * (kv // tp) * hd * e            # K and V of the whole sequence, on one tp rank
    assert gathered == want and isinstance(gathered, int), f"{gathered!r}: an int of {want} bytes"
    assert received == pytest.approx(want * (cp - 1) / cp)


@pytest.mark.points(1, exercise="15.3")
def test_cp_gather_bytes_matches_the_simulator(exercise):
    """The simulator's A_kv (simulator/context_parallel.kv_bytes) for Llama 3 405B at 128K, tp 8."""
    from simulator.config import load_config
    from simulator.context_parallel import kv_bytes

    m = load_config({"model": {"preset": "llama3-405b"}}).model
    gathered, _ = exercise.cp_gather_bytes(1, 131072, m.n_kv_heads, m.dim // m.n_heads, 8, 16, 2)
    assert gathered == pytest.approx(kv_bytes(m, 131072, 1, 8, "bf16"))


@pytest.mark.points(1, exercise="15.3")
def test_cp_gather_bytes_do_not_shrink_with_cp(exercise):
    """Each rank gathers the whole sequence's K and V whatever cp is; with one rank nothing comes in."""
    gathered = {cp: exercise.cp_gather_bytes(1, 65536, 8, 128, 8, cp)[0] for cp in (1, 2, 4, 16)}
    assert len(set(gathered.values())) == 1
    assert exercise.cp_gather_bytes(1, 65536, 8, 128, 8, 1)[1] == 0


@pytest.mark.points(1, exercise="15.3")
@pytest.mark.parametrize("args", [(0, 8, 8, 128, 8, 2), (1, 8, 8, 128, 3, 2), (1, 8, 8, 128, 8, 0),
                                  (1, -8, 8, 128, 8, 2)])
def test_cp_gather_bytes_rejects_bad_input(exercise, args):
    with pytest.raises(ValueError):
        exercise.cp_gather_bytes(*args)


# Exercise 15.4: gathered_attention on 2 gloo processes ------------------------------------------------------

@pytest.fixture(scope="module")
def attention(exercise):
    from workers_context_parallel import attention_worker

    from llama_course.core.testing import spawn

    return spawn(attention_worker, 2, exercise.__name__, timeout=120)


@pytest.mark.points(3, exercise="15.4")
def test_gathered_attention_matches_the_whole_sequence(attention):
    """Each rank's output equals its chunks of causal attention over the whole sequence in one process
    (grouped-query attention included)."""
    assert_ranks_finished(attention)
    for rank, rows in enumerate(attention):
        for case, r in enumerate(rows):
            assert r["shape_ok"], f"rank {rank} case {case}: the output has the queries' shape"
            assert r["out_diff"] < 1e-10, f"rank {rank} case {case}: output off by {r['out_diff']}"


@pytest.mark.points(2, exercise="15.4")
def test_gathered_attention_one_all_gather_of_the_local_kv(attention):
    """Recorded on the wire: the forward hands torch.distributed ONE all-gather of this rank's K and V
    (gathering q too, or everything, or K and V in two calls, fails), and nothing else."""
    assert_ranks_finished(attention)
    for rank, rows in enumerate(attention):
        for case, r in enumerate(rows):
            used = {k for k, n in r["forward"]["bytes"].items() if n}
            assert used == {"all_gather"}, f"rank {rank} case {case}: {sorted(used)} in the forward, all_gather only"
            assert calls_of(r["forward"], "all_gather") == [r["kv_bytes"]], \
                f"rank {rank} case {case}: all-gathers of {calls_of(r['forward'], 'all_gather')} bytes; " \
                f"one of the local K and V is {r['kv_bytes']}"


@pytest.mark.points(3, exercise="15.4")
def test_gathered_attention_gradients(attention):
    """dq, dk, dv on each rank equal the single-process gradients' slices: dk and dv need every rank's
    contribution (its queries read my keys), dq only mine."""
    assert_ranks_finished(attention)
    for rank, rows in enumerate(attention):
        for case, r in enumerate(rows):
            assert r["dq_diff"] < 1e-10, f"rank {rank} case {case}: dq off by {r['dq_diff']}"
            assert r["dk_diff"] < 1e-10 and r["dv_diff"] < 1e-10, \
                f"rank {rank} case {case}: dk, dv off by {r['dk_diff']}, {r['dv_diff']} (summed over the ranks?)"


@pytest.mark.points(2, exercise="15.4")
def test_gathered_attention_backward_is_one_reduce_scatter(attention):
    """Recorded: the backward hands torch.distributed ONE reduce-scatter of the whole sequence's dK, dV (an
    all-reduce then a slice moves twice the bytes), and nothing else."""
    assert_ranks_finished(attention)
    for rank, rows in enumerate(attention):
        for case, r in enumerate(rows):
            used = {k for k, n in r["backward"]["bytes"].items() if n}
            assert used == {"reduce_scatter"}, \
                f"rank {rank} case {case}: {sorted(used)} in the backward, reduce_scatter only"
            assert calls_of(r["backward"], "reduce_scatter") == [r["full_kv_bytes"]], \
                f"rank {rank} case {case}: reduce-scatters of {calls_of(r['backward'], 'reduce_scatter')} bytes; " \
                f"one of the whole sequence's dK, dV is {r['full_kv_bytes']}"
