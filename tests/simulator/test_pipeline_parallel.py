import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.collectives import CommModel
from simulator.config import ConfigError, load_config
from simulator.hardware import hardware_for
from simulator.memory import layers_per_virtual_stage, stage_layers
from simulator.parallel_3d import Layout, stage_costs
from simulator.pipeline_parallel import (
    SharedCores,
    bubble_fraction,
    interleave_group,
    partition_layers,
    peak_in_flight,
    rank_layers,
    schedule_order,
    simulate_pipeline,
)
from simulator.topology import Cluster


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
@given(st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b", "zero_bubble"]), st.integers(1, 6), st.integers(1, 4),
       st.integers(1, 3))
def test_every_task_runs_once_and_backward_follows_forward(schedule, p, groups, v):
    if schedule != "interleaved_1f1b":
        v = 1
    m = p * groups
    kinds = "FBW" if schedule == "zero_bubble" else "FB"
    for r in range(p):
        order = schedule_order(schedule, p, m, v, r)
        assert sorted(order) == sorted([(k, i, c) for k in kinds for i in range(m) for c in range(v)])
        seen = set()
        for kind, i, c in order:
            if kind == "B":
                assert ("F", i, c) in seen
            if kind == "W":
                assert ("B", i, c) in seen
            seen.add((kind, i, c))


def test_activations_in_flight():
    p, m = 4, 16
    assert peak_in_flight(schedule_order("1f1b", p, m, 1, 0), [1]) == p
    assert peak_in_flight(schedule_order("1f1b", p, m, 1, p - 1), [1]) == 1
    assert peak_in_flight(schedule_order("gpipe", p, m, 1, 0), [1]) == m
    # zero bubble holds a micro-batch until its W: every rank up to p, 1F1B's peak (rank 0's), never more
    assert [peak_in_flight(schedule_order("zero_bubble", p, m, 1, r), [1]) for r in range(p)] == [p] * p


def torch_zero_bubble_order(p: int, m: int, v: int, rank: int) -> list:
    """The actions torch's ScheduleInterleavedZeroBubble gives `rank` (its own helpers, no processes)."""
    from torch.distributed.pipelining.schedules import _ComputationType as CT
    from torch.distributed.pipelining.schedules import _get_1f1b_rank_ops, _get_warmup_ops

    n = m // max(1, m // p)
    warm = _get_warmup_ops(rank, v, n, p, m, multiply_factor=1)
    ops = _get_1f1b_rank_ops(v, p, warm, v * m - warm, warm, rank,
                             lambda step: ((step // n) % v) * p + rank,
                             lambda step: (v - 1 - ((step - warm) // n) % v) * p + rank,
                             rank, enable_zero_bubble=True)
    kind = {CT.FORWARD: "F", CT.BACKWARD_INPUT: "B", CT.BACKWARD_WEIGHT: "W"}
    return [(kind[a.computation_type], a.microbatch_index, a.stage_index // p) for a in ops if a is not None]


@pytest.mark.parametrize("p", [2, 3, 4, 8])
@pytest.mark.parametrize("v", [1, 2])
def test_zero_bubble_order_is_torchs(p, v):
    """schedule_order's zero bubble is torch's ScheduleInterleavedZeroBubble, action by action, on every rank
    (m = p, a multiple of p and one that is not, in equal rounds)."""
    for m in (p, 2 * p, 2 * p + 2):
        for r in range(p):
            assert schedule_order("zero_bubble", p, m, v, r) == torch_zero_bubble_order(p, m, v, r)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 24), st.integers(1, 3), st.floats(0.2, 2.0), st.floats(0.2, 1.0))
def test_zero_bubble_closed_form(p, extra, v, tf, ratio):
    """With equal stages (F t_f, B t_b, W t_b: the backward's two halves, t_w <= t_f, the paper's regime) and
    free communication, zero bubble idles (p - 1)(t_f + t_b - t_w) / v per rank instead of 1F1B's
    (p - 1)(t_f + 2 t_b), with v chunks."""
    tb = tf * ratio
    m = p + extra
    if v > 1:
        m -= m % max(1, m // p)
    run = simulate_pipeline("zero_bubble", p, m, v, [tf / v] * (p * v), [2 * tb / v] * (p * v))
    work = m * (tf + 2 * tb)
    assert run.makespan == pytest.approx(work + (p - 1) * tf / v)
    equal = simulate_pipeline("zero_bubble", p, m, v, [1 / v] * (p * v), [2 / v] * (p * v))
    assert 1 - 3 * m / equal.makespan == pytest.approx(bubble_fraction("zero_bubble", p, m, v))


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


# ---- uneven stages and interleaving in rounds (issue 17, item 2) ------------------------------------------

def test_llama3_405b_partition_as_published():
    """126 layers on pp 16 x vpp 8, one layer fewer on the first and last stage (Llama 3 paper, 3.3.2): the
    first chunk of the first stage holds only the embedding, the last chunk of the last only the head."""
    parts = partition_layers(126, 16, 8, first_stage_layers=7, last_stage_layers=7)
    sizes = [len(r) for r in parts]
    assert len(parts) == 128 and sizes[0] == 0 and sizes[-1] == 0
    assert sizes[1:-1] == [1] * 126
    assert [i for r in parts for i in r] == list(range(126))           # contiguous, in model order
    assert rank_layers(126, 16, 7, 7) == [7] + [8] * 14 + [7]
    assert sum(sizes[c * 16 + 0] for c in range(8)) == 7 and sum(sizes[c * 16 + 5] for c in range(8)) == 8


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 40))
def test_even_partition_is_the_old_split(p, v, extra):
    """Without first/last, wherever the schema allowed it before (v = 1, or p v dividing n), nothing moves."""
    n = p * v * max(1, extra // (p * v)) if v > 1 else p + extra
    assert [len(r) for r in partition_layers(n, p, v)] == layers_per_virtual_stage(n, p * v)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 10), st.integers(1, 4), st.integers(0, 30), st.data())
def test_uneven_partition_adds_up(p, v, extra, data):
    n = p + extra
    first = data.draw(st.one_of(st.none(), st.integers(1, n - p + 1)))
    room = n - (first or 0) - (p - 1 if first is not None else p - 1)
    last = data.draw(st.one_of(st.none(), st.integers(1, max(1, room))))
    try:
        per_rank = rank_layers(n, p, first, last)
    except ValueError:
        return
    assert sum(per_rank) == n and min(per_rank) >= 1                   # every stage holds a layer here
    if first is not None:
        assert per_rank[0] == first
    if last is not None:
        assert per_rank[-1] == last
    middle = per_rank[1 if first is not None else 0: p - 1 if last is not None else p]
    assert not middle or max(middle) - min(middle) <= 1                     # the rest split evenly
    sizes = [len(r) for r in partition_layers(n, p, v, first, last)]
    for r in range(p):
        chunks = [sizes[c * p + r] for c in range(v)]
        assert sum(chunks) == per_rank[r] and max(chunks) - min(chunks) <= 1


def test_interleave_rounds():
    assert interleave_group(4, 8) == 4 and interleave_group(16, 32) == 16      # p divides m: rounds of p
    assert interleave_group(4, 10) == 5 and interleave_group(4, 6) == 6        # m // p equal rounds
    for m in (3, 17, 33):
        with pytest.raises(ValueError):
            interleave_group(4 if m != 33 else 16, m)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 12), st.integers(2, 4))
def test_interleaved_runs_any_valid_micro_batch_count(p, extra, v):
    """m need not be a multiple of p: every task runs once, no rank deadlocks, and interleaving still
    beats plain 1F1B on the same m."""
    m = p + extra
    if m % max(1, m // p):
        return
    for r in range(p):
        order = schedule_order("interleaved_1f1b", p, m, v, r)
        assert sorted(order) == sorted([(k, i, c) for k in "FB" for i in range(m) for c in range(v)])
    run = simulate_pipeline("interleaved_1f1b", p, m, v, [1.0 / v] * (p * v), [2.0 / v] * (p * v))
    plain = simulate_pipeline("1f1b", p, m, 1, [1.0] * p, [2.0] * p)
    assert 3.0 * m < run.makespan < plain.makespan


def test_interleaved_rounds_of_p_keep_megatron_order():
    """With p | m the order is Megatron-LM 2021's: rank 0 warms up with (p-1) 2 + (v-1) p forwards."""
    p, m, v = 4, 8, 2
    order = schedule_order("interleaved_1f1b", p, m, v, 0)
    warm = (p - 1) * 2 + (v - 1) * p
    assert [k for k, _, _ in order[:warm]] == ["F"] * warm and order[warm:warm + 2] == [("F", 6, 0), ("B", 0, 1)]
    assert order[:5] == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0), ("F", 3, 0), ("F", 0, 1)]


LLAMA3 = ["cluster.num_gpus=16384", "parallel.vpp=8", "parallel.schedule=interleaved_1f1b",
          "parallel.first_stage_layers=7", "parallel.last_stage_layers=7"]


def test_uneven_stages_reach_the_simulator():
    """The schema's first/last layer counts decide each virtual stage's work and parameters."""
    cfg = load_config("configs/llama3-405b-h100.yaml", LLAMA3, runtime=False)   # the published run (ZeRO-1 under tp x pp)
    layers = stage_layers(cfg)
    assert layers[0] == 0 and layers[-1] == 0 and sum(layers) == 126
    hw = hardware_for(cfg)
    comm = CommModel(Cluster(hw, cfg.cluster.num_gpus))
    fwd, _, blk, _ = stage_costs(cfg, hw, comm, Layout(8, 128, 16, 8), layers)
    assert fwd[0].compute < blk.forward                    # the embedding alone, no block
    assert fwd[1].compute == pytest.approx(blk.forward)    # one block
    assert fwd[-1].compute < blk.forward                   # the head alone


@pytest.mark.parametrize("overrides, message", [
    (["parallel.pp=1", "cluster.num_gpus=8", "parallel.first_stage_layers=3"],
     "parallel.first_stage_layers: needs pp >= 2"),
    (["parallel.first_stage_layers=0"], "parallel.first_stage_layers: must be at least 1"),
    (["parallel.first_stage_layers=60", "parallel.last_stage_layers=60"], "parallel.last_stage_layers: leaves 6"),
    (["parallel.pp=2", "cluster.num_gpus=2048", "parallel.first_stage_layers=60", "parallel.last_stage_layers=60"],
     "must add up to model.n_layers 126"),
    (["parallel.vpp=2", "parallel.schedule=interleaved_1f1b"], "parallel.vpp: 2 does not divide"),
    (["parallel.vpp=2", "parallel.schedule=interleaved_1f1b", "parallel.first_stage_layers=7",
      "parallel.global_batch_size=4224"], "33 micro-batches do not split into 2 rounds"),
    (["parallel.first_stage_layers=7", "load_balance.policy=balanced_stages"], "balanced_stages"),
])
def test_bad_pipelines_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/llama3-405b-h100.yaml", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_interleaved_accepts_micro_batches_in_equal_rounds():
    cfg = load_config("configs/llama3-405b-h100.yaml", ["parallel.vpp=2", "parallel.schedule=interleaved_1f1b",
                                                        "parallel.first_stage_layers=7",
                                                        "parallel.global_batch_size=4352"], runtime=False)
    assert cfg.grad_accum_steps == 34 and interleave_group(16, 34) == 17


def test_shared_cores_stretch_only_while_tasks_overlap():
    """Processor sharing: two 1 s tasks started together on a machine where two run 1.5x slower each end at
    1.5 s; a third started at 1 s beside the second runs alone once the second ends."""
    import simpy
    env = simpy.Environment()
    cores = SharedCores(env, lambda k: 1.5 if k >= 2 else 1.0)
    ends = {}

    def task(name, start, work):
        yield env.timeout(start)
        yield cores.run(work)
        ends[name] = env.now

    for name, start, work in (("a", 0.0, 1.0), ("b", 0.0, 1.0), ("c", 1.5, 1.0)):
        env.process(task(name, start, work))
    env.run()
    assert ends["a"] == pytest.approx(1.5) and ends["b"] == pytest.approx(1.5) and ends["c"] == pytest.approx(2.5)


def test_pipeline_stages_share_one_machine():
    """On one core (slowdown k) a 2-stage pipeline takes the sum of all its work; without sharing, its
    closed form; a stage that waits in the bubble lets the other run at full speed."""
    f, b, m = [1.0, 1.0], [2.0, 2.0], 4
    alone = simulate_pipeline("1f1b", 2, m, 1, f, b)
    assert alone.makespan == pytest.approx((m + 1) * 3.0)
    assert simulate_pipeline("1f1b", 2, m, 1, f, b, sharing=lambda k: 1.0).makespan == pytest.approx(alone.makespan)
    one_core = simulate_pipeline("1f1b", 2, m, 1, f, b, sharing=lambda k: float(k))
    assert one_core.makespan == pytest.approx(2 * m * 3.0)
    assert one_core.busy[0] + one_core.busy[1] > 2 * m * 3.0      # each task stretched while the other computes
    # two cores that run two processes 1.5x slower: between the two
    two = simulate_pipeline("1f1b", 2, m, 1, f, b, sharing=lambda k: 1.5 if k >= 2 else 1.0)
    assert alone.makespan < two.makespan < 1.5 * alone.makespan


def test_cpu_pipeline_prices_shared_cores():
    """A cpu pipeline step is simulated with the stages sharing the cores: cheaper than assuming every
    process computes all the time (the profile's compute_slowdown), dearer than none sharing."""
    cfg = load_config("configs/tiny.yaml", ["parallel.pp=2", "parallel.dp=1", "parallel.tp=1",
                                            "parallel.schedule=1f1b", "cluster.num_gpus=null"])
    hw = hardware_for(cfg)
    full = hw.sharing_slowdown(2)
    assert full > 1.0
    from simulator.parallel_3d import simulate_step
    step = simulate_step(cfg, hw, CommModel(Cluster(hw, 2)), contention=False)
    fwd, bwd, _, _ = stage_costs(cfg, hw, CommModel(Cluster(hw, 2)), Layout(1, 1, 2, 1), stage_layers(cfg))
    m = cfg.grad_accum_steps
    always = simulate_pipeline("1f1b", 2, m, 1, [c.total for c in fwd], [c.total for c in bwd])
    never = simulate_pipeline("1f1b", 2, m, 1, [c.total / full for c in fwd], [c.total / full for c in bwd])
    assert never.makespan < step.pipeline.makespan < always.makespan
    assert sum(step.breakdown.values()) == pytest.approx(step.step_time, rel=1e-6)
