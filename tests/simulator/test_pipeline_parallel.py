import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.pipeline_parallel import bubble_fraction, peak_in_flight, schedule_order, simulate_pipeline


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["gpipe", "1f1b"]), st.integers(1, 8), st.integers(1, 24),
       st.floats(0.1, 3.0), st.floats(0.1, 3.0))
def test_bubble_closed_form(schedule, p, m, tf, tb):
    run = simulate_pipeline(schedule, p, m, 1, [tf] * p, [tb] * p)
    assert run.makespan == pytest.approx((m + p - 1) * (tf + tb))
    idle = 1 - sum(run.busy) / (p * run.makespan)
    assert idle == pytest.approx(bubble_fraction(schedule, p, m))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 6), st.integers(2, 4))
def test_interleaved_bubble_closed_form(p, groups, v):
    m = p * groups
    tf, tb = 1.0 / v, 2.0 / v            # the same model cut into v times more, smaller chunks
    run = simulate_pipeline("interleaved_1f1b", p, m, v, [tf] * (p * v), [tb] * (p * v))
    ideal = m * 3.0
    assert (run.makespan - ideal) / ideal == pytest.approx((p - 1) / (v * m))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b"]), st.integers(1, 6), st.integers(1, 4),
       st.integers(1, 3))
def test_every_task_runs_once_and_backward_follows_forward(schedule, p, groups, v):
    if schedule != "interleaved_1f1b":
        v = 1
    m = p * groups
    for r in range(p):
        order = schedule_order(schedule, p, m, v, r)
        assert sorted(order) == sorted([(k, i, c) for k in "FB" for i in range(m) for c in range(v)])
        seen = set()
        for kind, i, c in order:
            if kind == "B":
                assert ("F", i, c) in seen
            seen.add((kind, i, c))


def test_activations_in_flight():
    p, m = 4, 16
    assert peak_in_flight(schedule_order("1f1b", p, m, 1, 0), [1]) == p
    assert peak_in_flight(schedule_order("1f1b", p, m, 1, p - 1), [1]) == 1
    assert peak_in_flight(schedule_order("gpipe", p, m, 1, 0), [1]) == m


def test_p16_m64_is_simulated_event_by_event():
    p, m = 16, 64
    run = simulate_pipeline("1f1b", p, m, 1, [1.0] * p, [2.0] * p, p2p=0.01)
    assert len(run.tasks) == 2 * p * m
    assert run.events >= 2 * p * m + 2 * (p - 1) * m            # every task and every send is an event
    assert run.makespan > (m + p - 1) * 3.0                       # sends cost time on the critical path


def test_a_straggler_slows_the_pipeline():
    base = simulate_pipeline("1f1b", 4, 8, 1, [1.0] * 4, [2.0] * 4)
    slow = simulate_pipeline("1f1b", 4, 8, 1, [1.0] * 4, [2.0] * 4, slow={2: 1.5})
    assert slow.makespan > base.makespan * 1.3
