"""comm_bytes: the simulator's bytes per rank and step (simulator/comm_bytes.py) against the runtime's wire
recorder, byte for byte, through `compare` (the rest of the layouts: benchmarks/comm_bytes.py)."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import spec
from simulator.comm_bytes import KINDS, comm_bytes, ring, unpredicted
from simulator.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
BASE = ["training.eval_every=0", "parallel.implementation=course", "cluster.num_gpus=null"]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.integers(1, 8))
def test_rings_send_what_the_others_receive(n, n_ranks):
    for collective, factor in (("reduce_scatter", 1), ("all_gather", 1), ("all_reduce", 2)):
        sent = [ring(collective, n, n_ranks, i)[0] for i in range(n_ranks)]
        received = [ring(collective, n, n_ranks, i)[1] for i in range(n_ranks)]
        assert sum(sent) == sum(received) == factor * (n_ranks - 1) * n     # each chunk to N - 1 ranks
        if n % n_ranks == 0:                                                # the textbook 2 (N-1)/N n
            assert sent == [factor * (n_ranks - 1) * n // n_ranks] * n_ranks


def test_data_parallel_sends_the_ring_bytes_of_the_model():
    cfg = load_config(CONFIG, BASE + ["parallel.dp=2", "training.steps=3"])
    params = sum(spec.numel(s) for _, s in spec.parameters(cfg.model, cfg.seq_len))
    out = comm_bytes(cfg)
    assert len(out) == 2 and all(len(steps) == 3 for steps in out)
    for rank in out:
        step = rank[0]
        assert set(step) == set(KINDS)
        assert step["all_reduce"] == 8                                      # the loss, fp64
        # one ring all-reduce per bucket: every bucket's chunk sizes add up to the model
        assert sum(r[0]["send"] for r in out) == 2 * 4 * params


def test_zero3_gathers_each_block_twice_per_micro_batch():
    items = BASE + ["parallel.dp=2", "parallel.zero_stage=3"]
    one = comm_bytes(load_config(CONFIG, items + ["parallel.global_batch_size=8"]), steps=1)[0][0]
    two = comm_bytes(load_config(CONFIG, items + ["parallel.global_batch_size=16"]), steps=1)[0][0]
    cfg = load_config(CONFIG, items)
    blocks = cfg.model.n_layers * sum(spec.numel(s) for _, s in spec.block_parameters(cfg.model))
    rest = sum(spec.numel(s) for n, s in spec.parameters(cfg.model, cfg.seq_len) if not n.startswith("layers."))
    # one more micro-batch: every block gathered twice more, the rest once (half of each to the peer)
    assert two["send"] - one["send"] == 4 * (2 * blocks + rest) // 2


def test_local_sgd_averages_every_local_steps():
    cfg = load_config(CONFIG, BASE + ["parallel.dp=2", "parallel.sync=local_sgd", "parallel.local_steps=3"])
    steps = comm_bytes(cfg, steps=6)[0]
    big = [s["all_reduce"] > 16 for s in steps]
    assert big == [False, False, True, False, False, True]


def test_torch_implementations_are_not_predicted():
    cfg = load_config(CONFIG, BASE + ["parallel.dp=2", "parallel.implementation=torch", "parallel.zero_stage=3"])
    assert "torch" in unpredicted(cfg)
    with pytest.raises(ValueError, match="not predicted"):
        comm_bytes(cfg)
    ddp = load_config(CONFIG, BASE + ["parallel.dp=2", "parallel.implementation=torch"])
    total = sum(spec.numel(s) for _, s in spec.parameters(ddp.model, ddp.seq_len))
    assert comm_bytes(ddp, steps=1)[0][0]["all_reduce"] == 4 * total + 8      # every gradient, then the loss


@pytest.mark.parametrize("name, overrides", [
    ("dp 2 ZeRO-3", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=1", "parallel.zero_stage=3"]),
    ("tp 2", ["parallel.dp=1", "parallel.tp=2", "parallel.pp=1"]),
    ("pp 2 1F1B", ["parallel.dp=1", "parallel.tp=1", "parallel.pp=2", "parallel.schedule=1f1b"]),
    ("parameter server BSP", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=1",
                              "parallel.strategy=parameter_server", "parallel.num_servers=1"]),
    # DDP's C++ reducer is seen through watch_ddp's Python hook (data_parallel_torch.DDPSync); without it the
    # recorder counts the loss only
    ("torch DDP", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=1", "parallel.implementation=torch"]),
    # the course's ZeRO-1 under tensor parallelism (Megatron-LM's distributed optimizer), new in the table
    ("tp 2 x dp 2 ZeRO-1", ["parallel.dp=2", "parallel.tp=2", "parallel.pp=1", "parallel.zero_stage=1"]),
    # context parallelism: the K/V all-gather and dK/dV reduce-scatter per block, again under recomputation
    ("cp 2 selective", ["parallel.dp=1", "parallel.cp=2", "parallel.tp=1", "parallel.pp=1",
                        "parallel.activation_checkpointing=selective"]),
    ("pp 2 x cp 2", ["parallel.dp=1", "parallel.cp=2", "parallel.tp=1", "parallel.pp=2", "parallel.schedule=1f1b"]),
])
def test_compare_reports_equal_comm_bytes(name, overrides):
    """Four of the compare suite's layouts and two combinations beyond it, 2 steps each: predicted and measured
    equal byte for byte."""
    from llama_course.commands.compare import compare

    r = compare(CONFIG, BASE + overrides, steps=2, quiet=True)
    predicted, measured = r["predicted"]["comm_bytes"], r["measured"]["comm_bytes"]
    assert r["comm_bytes_equal"] is True, r["notes"]
    assert predicted == measured and len(measured) >= 2 and all(len(steps) == 2 for steps in measured)
    assert all(sum(step.values()) > 0 for steps in measured for step in steps)
    # the exposed communication's wait for a slower rank is split out where every rank issues the same
    # collectives (one data-parallel group), not where sends and receives cannot be paired
    wait, exposed = r["measured"]["straggle_wait_s"], r["measured"]["breakdown_s"]["exposed_comm"]
    if name.startswith("pp "):
        assert wait is None
    elif name == "dp 2 ZeRO-3":
        assert wait is not None and wait <= exposed and r["predicted"]["straggle_wait_s"] is not None
