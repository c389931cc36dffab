"""Graded tests for the 3-D parallelism exercises (labs/exercises/parallel_3d.py), points per test.

The grid formula, byte counts and brute-force enumerations are written here; exercise 6.5 runs on 4 gloo
processes and checks group membership by all-reducing over the returned groups.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))      # the spawned workers import these by name

GRIDS = [(2, 2, 2), (4, 2, 1), (1, 8, 2), (3, 2, 4), (1, 1, 1)]    # (dp, tp, pp)


def rank_of(q, d, t, dp, tp):
    return t + tp * (d + dp * q)


# Exercise 6.1: mesh_coordinates --------------------------------------------------------------------------

@pytest.mark.points(2, exercise="6.1")
@pytest.mark.parametrize("dp,tp,pp", GRIDS)
def test_mesh_coordinates(exercise, dp, tp, pp):
    for q, d, t in itertools.product(range(pp), range(dp), range(tp)):
        assert tuple(exercise.mesh_coordinates(rank_of(q, d, t, dp, tp), dp, tp, pp)) == (q, d, t)


@pytest.mark.points(1, exercise="6.1")
def test_mesh_coordinates_rejects_bad_rank(exercise):
    with pytest.raises(ValueError):
        exercise.mesh_coordinates(8, 2, 2, 2)
    with pytest.raises(ValueError):
        exercise.mesh_coordinates(-1, 2, 2, 2)


# Exercise 6.2: process_groups ----------------------------------------------------------------------------

@pytest.mark.points(3, exercise="6.2")
@pytest.mark.parametrize("dp,tp,pp", GRIDS)
def test_process_groups(exercise, dp, tp, pp):
    groups = exercise.process_groups(dp, tp, pp)
    n = dp * tp * pp
    expected = {"tp": set(), "dp": set(), "pp": set()}
    for r in range(n):
        t, d, q = r % tp, (r // tp) % dp, r // (tp * dp)
        expected["tp"].add(tuple(rank_of(q, d, x, dp, tp) for x in range(tp)))
        expected["dp"].add(tuple(rank_of(q, x, t, dp, tp) for x in range(dp)))
        expected["pp"].add(tuple(rank_of(x, d, t, dp, tp) for x in range(pp)))
    for kind in ("tp", "dp", "pp"):
        got = [tuple(g) for g in groups[kind]]
        assert sorted(got) == sorted(expected[kind]), kind
        assert all(list(g) == sorted(g) for g in got), f"{kind} groups must be sorted"


# Exercise 6.3: model_state_bytes, fits_in_memory ---------------------------------------------------------

@pytest.mark.points(3, exercise="6.3")
def test_model_state_bytes(exercise):
    n = 70e9
    for dp, tp, pp in [(8, 8, 4), (64, 1, 1), (16, 4, 2)]:
        psi = n / (tp * pp)
        assert exercise.model_state_bytes(n, dp, tp, pp, 0) == pytest.approx(16 * psi)
        assert exercise.model_state_bytes(n, dp, tp, pp, 1) == pytest.approx(4 * psi + 12 * psi / dp)
        assert exercise.model_state_bytes(n, dp, tp, pp, 2) == pytest.approx(2 * psi + 14 * psi / dp)
        assert exercise.model_state_bytes(n, dp, tp, pp, 3) == pytest.approx(16 * psi / dp)
    with pytest.raises(ValueError):
        exercise.model_state_bytes(n, 8, 1, 1, 4)


@pytest.mark.points(1, exercise="6.3")
def test_fits_in_memory(exercise):
    # LLaMA-7B (6.74e9 parameters) on 80 GB: 108 GB of states alone without sharding
    assert not exercise.fits_in_memory(6.74e9, 1, 1, 1, 0, 0, 80e9)
    assert exercise.fits_in_memory(6.74e9, 1, 2, 1, 0, 20e9, 80e9)              # 53.9 + 20
    assert exercise.fits_in_memory(6.74e9, 8, 1, 1, 3, 60e9, 80e9)              # 13.5 + 60
    assert exercise.fits_in_memory(1e9, 1, 1, 1, 0, 64e9, 80e9)                 # exactly full
    assert not exercise.fits_in_memory(1e9, 1, 1, 1, 0, 64e9 + 1, 80e9)


# Exercise 6.4: valid_layouts -----------------------------------------------------------------------------

@pytest.mark.points(3, exercise="6.4")
@pytest.mark.parametrize("n,heads,kv,layers,gpn", [(64, 32, 32, 32, 8), (32, 64, 8, 80, 8), (24, 12, 4, 6, 4),
                                                  (16, 32, 8, 2, 8), (1, 4, 2, 4, 8), (12, 4, 4, 3, 4)])
def test_valid_layouts(exercise, n, heads, kv, layers, gpn):
    expected = sorted((dp, tp, pp) for dp, tp, pp in itertools.product(range(1, n + 1), repeat=3)
                      if dp * tp * pp == n and gpn % tp == 0 and heads % tp == 0 and kv % tp == 0
                      and pp <= layers)
    got = [tuple(x) for x in exercise.valid_layouts(n, heads, kv, layers, gpn)]
    assert got == expected
    assert all(type(v) is int for layout in got for v in layout), "degrees are whole numbers (ints)"


# Exercise 6.5: new_process_groups (4 gloo processes) -----------------------------------------------------

LAYOUTS_4 = [(2, 2, 1), (1, 2, 2), (2, 1, 2), (1, 4, 1)]


@pytest.fixture(scope="module")
def group_members(impl):
    from workers_parallel_3d import groups_worker

    from llama_course.core.testing import spawn

    return spawn(groups_worker, 4, impl, LAYOUTS_4, timeout=120)


@pytest.mark.points(4, exercise="6.5")
def test_new_process_groups(group_members):
    for rank, per_layout in enumerate(group_members):
        for (dp, tp, pp), members in zip(LAYOUTS_4, per_layout):
            t, d, q = rank % tp, (rank // tp) % dp, rank // (tp * dp)
            assert members["tp"] == [rank_of(q, d, x, dp, tp) for x in range(tp)], (rank, dp, tp, pp)
            assert members["dp"] == [rank_of(q, x, t, dp, tp) for x in range(dp)], (rank, dp, tp, pp)
            assert members["pp"] == [rank_of(x, d, t, dp, tp) for x in range(pp)], (rank, dp, tp, pp)
