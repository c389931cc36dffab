"""Simulator parameter server: closed form vs the flow model, when it loses to the ring, and simulate()."""

import pytest

from simulator.config import load_config
from simulator.hardware import gpu_preset
from simulator.parameter_server import (
    crossover_table,
    ps_step_comm,
    ring_all_reduce_time,
    server_shares,
    simulate_push,
    tensor_sizes,
)
from simulator.simulate import simulate
from simulator.workload import count_params


def test_tensor_sizes_match_the_parameter_count():
    for preset in ("tiny", "llama-7b", "llama2-70b"):
        cfg = load_config({"model": {"preset": preset}})
        assert sum(tensor_sizes(cfg.model)) == count_params(cfg.model)


def test_one_server_loses_by_about_n():
    bw, lat = 25e9, 5e-6
    psi = 7e9
    for n in (8, 64):
        ps = ps_step_comm(n, psi, [1.0], 2, 2, bw, lat)
        ring = ring_all_reduce_time(n, 2 * psi, bw, lat)
        assert (ps["push_s"] + ps["pull_s"]) / ring == pytest.approx(n ** 2 / (n - 1) / 1, rel=0.02)
    ps = ps_step_comm(8, psi, [1 / 8] * 8, 2, 2, bw, lat)      # k = N even shards: as fast as the ring, ~
    assert (ps["push_s"] + ps["pull_s"]) / ring_all_reduce_time(8, 2 * psi, bw, lat) < 1.2


def test_flow_model_agrees_with_closed_form():
    hw = gpu_preset("a100-80gb")
    for n, shares in ((8, [1.0]), (16, [0.5, 0.5])):
        flow = simulate_push(hw, n, shares, 1e8, 2)
        closed = ps_step_comm(n, 1e8, shares, 2, 2, hw.inter_bandwidth, hw.inter_latency)["push_s"]
        assert flow == pytest.approx(closed, rel=0.1)


def test_shares_bounded_by_largest_tensor():
    cfg = load_config({"model": {"preset": "llama-7b"}, "parallel": {"num_servers": 64}})
    shares = server_shares(cfg)
    assert sum(shares) == pytest.approx(1.0)
    assert max(shares) >= 32000 * 4096 / count_params(cfg.model) - 1e-12     # the embedding alone


def test_simulate_parameter_server_slower_than_all_reduce_with_many_workers():
    base = {"model": {"preset": "tiny"}, "seq_len": 64, "training": {"precision": "fp32"},
            "cluster": {"gpu": "a100-80gb", "num_gpus": 16}, "parallel": {"dp": 16, "global_batch_size": 16}}
    ring = simulate(base)
    ps = simulate({**base, "parallel": {**base["parallel"], "strategy": "parameter_server"}})
    assert ps["step_time_s"] > ring["step_time_s"]
    assert ps["parameter_server"]["server_bound"]
    assert "| 512 |" in crossover_table()
