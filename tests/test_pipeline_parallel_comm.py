"""Pipeline stages pair their sends and receives (llama_course/parallel/pipeline_parallel_comm.py): the
course's schedules run under NCCL's rendezvous rules (strict mode on gloo) and match one process."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_tensor_parallel import assert_matches_single_process  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from llama_course.parallel.pipeline_parallel_comm import (  # noqa: E402
    p2p_plan,
    rendezvous_check,
    schedule_plan,
    task_messages,
)
from simulator.pipeline_parallel import schedule_order  # noqa: E402

ONE_F_ONE_B = {"parallel.pp": 2, "cluster.num_gpus": 2, "parallel.schedule": "1f1b", "parallel.global_batch_size": 4}


def test_1f1b_on_two_stages_with_four_micro_batches_keeps_nccl_rules():
    """p = 2, m = 4: unpaired, rank 0 sends F1 while rank 1 sends B0 and both wait (NCCL deadlock)."""
    result = spawn(workers.strict_layouts, 2, [ONE_F_ONE_B], timeout=180)[0][0]
    assert result["engine"] == "pipeline_parallel"
    assert_matches_single_process(result)


def unpaired_plan(schedule: str, p: int, m: int, v: int, rank: int) -> list:
    """Every message in a batch of its own, posted when the task needs it (the pre-pairing engine)."""
    plan = []
    for task in schedule_order(schedule, p, m, v, rank):
        recv, send = task_messages(*task, p, v, rank)
        plan += [[recv]] if recv else []
        plan += [[send]] if send else []
    return plan


def test_unpaired_1f1b_deadlocks_under_nccl_rules():
    """The claim behind pairing: one message per batch, 1F1B with p = 2, m = 4 deadlocks (both ranks send)."""
    trouble = rendezvous_check([unpaired_plan("1f1b", 2, 4, 1, r) for r in range(2)])
    assert trouble.startswith("deadlock")
    assert "('send', 1, ('F', 1, 1))" in trouble and "('send', 0, ('B', 0, 0))" in trouble


def test_pairing_one_message_per_batch_fails_interleaved_too():
    """Interleaved 1F1B is not saved by pairing each send with the next receive: it needs its F/B units."""
    assert rendezvous_check([p2p_plan(schedule_order("interleaved_1f1b", 2, 4, 2, r), 2, 2, r)
                             for r in range(2)]).startswith("deadlock")


@settings(max_examples=150, deadline=None)
@given(schedule=st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b", "zero_bubble"]), p=st.integers(2, 8),
       m=st.integers(1, 24), v=st.integers(2, 4))
def test_every_schedule_completes_under_nccl_rules(schedule, p, m, v):
    """Paired plans of GPipe, 1F1B, zero bubble (m >= p) and interleaved 1F1B (m a multiple of p) complete,
    messages matched in order."""
    if schedule == "interleaved_1f1b":
        m = p * (1 + m % 4)
    else:
        v = 1
    if schedule == "zero_bubble":
        m = max(m, p)
    assert rendezvous_check([schedule_plan(schedule, p, m, v, r) for r in range(p)]) is None


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b", "zero_bubble"]), p=st.integers(2, 6),
       rounds=st.integers(1, 3))
def test_plan_sends_each_message_once_after_it_is_computed(schedule, p, rounds):
    """Every task's output leaves in exactly one batch, never before the task ran; every input arrives in
    a batch before its task."""
    v = 2 if schedule == "interleaved_1f1b" else 1
    m = rounds * p
    for r in range(p):
        order = schedule_order(schedule, p, m, v, r)
        plan = schedule_plan(schedule, p, m, v, r)
        posted = {label: (t, d) for t, batch in enumerate(plan) for d, _, label in batch}
        n_messages = sum(len(b) for b in plan)
        assert n_messages == len(posted)                # no message twice
        for t, task in enumerate(order):
            recv, send = task_messages(*task, p, v, r)
            if recv:
                assert posted[recv[2]] == (posted[recv[2]][0], "recv") and posted[recv[2]][0] <= t
            if send:
                assert posted[send[2]][1] == "send" and posted[send[2]][0] > t
