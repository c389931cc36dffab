"""Graded tests for the profiling exercises (labs/exercises/profiling.py), points per test case.

Checked against hand-built traces, a brute-force time grid and the roofline's closed form written here.
"""

from __future__ import annotations

import random

import pytest

# Exercise 14.1: chrome_events ---------------------------------------------------------------------------

@pytest.mark.points(1, exercise="14.1")
def test_chrome_events(exercise):
    spans = [(1, "comm", "all_reduce", 0.002, 0.001), (0, "compute", "forward", 0.0, 0.0015),
             (0, "compute", "backward", 0.0015, 0.003)]
    got = exercise.chrome_events(spans)
    assert [(e["pid"], e["name"]) for e in got] == [(0, "forward"), (0, "backward"), (1, "all_reduce")]

    e = got[2]
    assert (e["ph"], e["tid"]) == ("X", "comm")
    assert e["ts"] == pytest.approx(2000.0) and e["dur"] == pytest.approx(1000.0)
    assert got[1]["ts"] == pytest.approx(1500.0) and got[1]["dur"] == pytest.approx(3000.0)


@pytest.mark.points(1, exercise="14.1")
def test_chrome_events_rejects_negative(exercise):
    with pytest.raises(ValueError):
        exercise.chrome_events([(0, "compute", "forward", 0.0, -1.0)])
    assert exercise.chrome_events([(0, "compute", "marker", 1.0, 0.0)])[0]["dur"] == 0     # instants are fine


# Exercise 14.2: exposed_time ----------------------------------------------------------------------------

def _grid_exposed(busy, cover, step=1e-3):
    """Brute force on a time grid of integers-in-milliseconds."""
    t, total = 0, 0
    while t < 11_000:
        x = (t + 0.5) * step
        if any(a <= x < b for a, b in busy) and not any(a <= x < b for a, b in cover):
            total += 1
        t += 1
    return total * step


@pytest.mark.points(1, exercise="14.2")
def test_exposed_time_small(exercise):
    assert exercise.exposed_time([(0, 4)], [(1, 2), (3, 5)]) == pytest.approx(2.0)
    assert exercise.exposed_time([(0, 1), (0.5, 2)], []) == pytest.approx(2.0)          # overlapping busy once
    assert exercise.exposed_time([(2, 3)], [(0, 10)]) == pytest.approx(0.0)


@pytest.mark.points(2, exercise="14.2")
def test_exposed_time_random(exercise):
    rng = random.Random(142)
    for _ in range(25):
        def spans(k):
            out = []
            for _ in range(k):
                a = rng.randrange(0, 9000)
                out.append((a / 1000, (a + rng.randrange(1, 1500)) / 1000))
            return out
        busy, cover = spans(rng.randrange(1, 8)), spans(rng.randrange(0, 8))
        assert exercise.exposed_time(busy, cover) == pytest.approx(_grid_exposed(busy, cover), abs=1e-6)


# Exercise 14.3: step_breakdown --------------------------------------------------------------------------

def _ev(name, tid, start_ms, dur_ms):
    return {"name": name, "ph": "X", "pid": 0, "tid": tid, "ts": start_ms * 1e3, "dur": dur_ms * 1e3}


@pytest.mark.points(2, exercise="14.3")
def test_step_breakdown_data_parallel_step(exercise):
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "rank 0"}},
              _ev("forward", "compute", 0, 10), _ev("backward", "compute", 10, 20),
              _ev("all_reduce", "comm", 15, 10), _ev("all_reduce", "comm", 26, 8),     # 4 ms after backward
              _ev("optimizer", "compute", 36, 3)]
    got = exercise.step_breakdown(events)
    expected = {"compute": 0.030, "exposed_comm": 0.004, "bubble": 0.0, "optimizer": 0.003, "step": 0.039,
                "idle": 0.002}
    assert got == pytest.approx(expected)
    later = [{**e, "ts": e["ts"] + 250e3} if e["ph"] == "X" else e for e in events]     # the same step 250 ms on
    assert exercise.step_breakdown(later) == pytest.approx(expected)
    zeros = dict.fromkeys(expected, 0.0)
    assert exercise.step_breakdown([]) == zeros and exercise.step_breakdown(events[:1]) == zeros


@pytest.mark.points(1, exercise="14.3")
def test_step_breakdown_pipeline_bubble(exercise):
    events = [_ev("bubble", "bubble", 0, 5), _ev("forward", "compute", 5, 5), _ev("bubble", "bubble", 10, 5),
              _ev("backward", "compute", 15, 10), _ev("send", "comm", 10, 1)]
    got = exercise.step_breakdown(events)
    assert got["bubble"] == pytest.approx(0.010) and got["compute"] == pytest.approx(0.015)
    assert got["exposed_comm"] == pytest.approx(0.001) and got["step"] == pytest.approx(0.025)
    assert got["idle"] == pytest.approx(0.0, abs=1e-9)          # comm in a bubble: counted once, idle clamps at 0


# Exercise 14.4: roofline --------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="14.4")
def test_roofline_random(exercise):
    rng = random.Random(144)
    for _ in range(40):
        flops, nbytes = 10 ** rng.uniform(6, 14), 10 ** rng.uniform(5, 11)
        peak, bw = 10 ** rng.uniform(11, 15), 10 ** rng.uniform(10, 13)
        got = exercise.roofline(flops, nbytes, peak, bw)
        i = flops / nbytes
        attainable = min(peak, i * bw)
        assert got["intensity"] == pytest.approx(i)
        assert got["attainable_flops"] == pytest.approx(attainable)
        assert got["time_s"] == pytest.approx(max(flops / peak, nbytes / bw))
        assert got["bound"] == ("compute" if i >= peak / bw else "memory")


@pytest.mark.points(1, exercise="14.4")
def test_roofline_a100(exercise):
    """A100 bf16 312 TFLOP/s on 2.0 TB/s: an RMSNorm (~1 FLOP/byte) is memory-bound, a big matmul is not."""
    assert exercise.roofline(1e9, 1e9, 312e12, 2.0e12)["bound"] == "memory"
    assert exercise.roofline(1e12, 1e9, 312e12, 2.0e12)["bound"] == "compute"
    assert exercise.roofline(100.0, 10.0, 100.0, 10.0)["bound"] == "compute"       # exactly at the ridge


# Exercise 14.5: matmul_intensity ------------------------------------------------------------------------

@pytest.mark.points(2, exercise="14.5")
@pytest.mark.parametrize("m,k,n,e", [(1, 4096, 4096, 2), (2048, 4096, 4096, 2), (8192, 4096, 11008, 2), (64, 64, 192, 4)])
def test_matmul_intensity(exercise, m, k, n, e):
    assert exercise.matmul_intensity(m, k, n, e) == pytest.approx(2 * m * k * n / (e * (m * k + k * n + m * n)))


@pytest.mark.points(1, exercise="14.5")
def test_matmul_intensity_grows_with_tokens(exercise):
    """One token (decoding) is ~1 FLOP/byte: memory-bound; thousands of tokens cross the A100 ridge (~156)."""
    assert exercise.matmul_intensity(1, 4096, 4096) < 1.01
    assert exercise.matmul_intensity(4096, 4096, 4096) > 156


# Exercise 14.6: merge_rank_traces on 3 gloo ranks -------------------------------------------------------

@pytest.mark.points(3, exercise="14.6")
def test_merge_rank_traces(exercise):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import exercise_workers_profiling as workers

    from llama_course.core.testing import spawn

    results = spawn(workers.check_merge, 3, exercise.__name__, timeout=90)
    start = min(workers.ORIGINS.values())
    expected = []
    for rank in range(3):
        for e in workers.rank_events(rank):
            expected.append({**e, "pid": rank, "ts": e["ts"] + (workers.ORIGINS[rank] - start) * 1e6})
    expected.sort(key=lambda e: (e["ts"], e["pid"]))
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["unchanged"], f"rank {rank}: the input events were modified"
        got = out["merged"]
        assert [(e["pid"], e["name"]) for e in got] == [(e["pid"], e["name"]) for e in expected], f"rank {rank}: order"
        for g, want in zip(got, expected):
            assert g["ts"] == pytest.approx(want["ts"], abs=1e-3) and g["dur"] == want["dur"]
