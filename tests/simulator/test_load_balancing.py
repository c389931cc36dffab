"""Simulator load balancing: closed forms on devices, shared cores on cpu, dispatch policies."""

import math

import pytest

from simulator.config import load_config
from simulator.hardware import hardware_for
from simulator.load_balancing import dispatch, policy_compute_time, predict, rank_finish_times, split_sizes
from simulator.simulate import simulate


def test_closed_forms_with_one_device_per_rank():
    f = [1, 1, 1, 3]
    none = policy_compute_time("none", 4, 16, 4, 1.0, f, None)
    assert none["compute_s"] == pytest.approx(3 * 4)            # the straggler's 4 sequences at 3 s
    dyn = policy_compute_time("dynamic_batch", 4, 300, 300, 1.0, f, None)
    assert dyn["compute_s"] == pytest.approx(300 / (3 + 1 / 3), rel=0.02)
    backup = policy_compute_time("backup_workers", 4, 16, 4, 1.0, f, None, backup=1)
    assert backup["compute_s"] == pytest.approx(4) and backup["sequences_used"] == 12
    # the mean rank's own compute: three ranks 4 s, the straggler 12 s (its sleep is its compute, as timed)
    assert none["mean_compute_s"] == pytest.approx((3 * 4 + 12) / 4)
    assert backup["mean_compute_s"] == pytest.approx(4)        # the abandoned straggler counts until the step goes on


def test_on_cpu_a_straggler_shows_as_the_mean_ranks_compute_and_wait(monkeypatch):
    """What `compare` measures (each component averaged over ranks): the fast rank waits in the all-reduce for
    the slow one, whose sleep the runtime counts as its compute. The step time does not move."""
    monkeypatch.setenv("LLAMA_COURSE_CORES", "2")
    cfg = {"model": {"preset": "tiny"}, "seq_len": 64, "training": {"precision": "fp32"},
           "cluster": {"gpu": "cpu", "num_gpus": 2},
           "parallel": {"dp": 2, "global_batch_size": 8, "micro_batch_size": 4}, "faults": {"slow": {1: 2}}}
    out, r = predict(cfg), simulate(cfg)
    b, straggle = r["breakdown_s"], hardware_for(load_config(cfg)).straggle_factor(2)
    assert out["compute_s"] - out["mean_compute_s"] > 0.2 * out["compute_s"]      # the fast rank's wait
    assert b["compute"] == pytest.approx(out["mean_compute_s"] / straggle)
    assert sum(b.values()) == pytest.approx(out["step_time_s"])                    # the step is unchanged


def test_shared_cores_and_a_sleeping_straggler():
    t = rank_finish_times([[1.0]] * 4, [1, 1, 1, 1], cores=2)
    assert t == pytest.approx([2.0] * 4)                        # 4 ranks on 2 cores: half speed
    t = rank_finish_times([[1.0, 1.0]] * 2, [1, 3], cores=1)
    assert t[0] < t[1] and math.isfinite(t[1])


def test_split_sizes_sum():
    assert split_sizes(16, [1, 1, 1, 1 / 3]) == [5, 5, 5, 1]
    assert sum(split_sizes(17, [0.3, 2, 5])) == 17


def test_predict_orders_the_policies():
    cfg = {"model": {"preset": "tiny"}, "seq_len": 64, "training": {"precision": "fp32"},
           "parallel": {"dp": 4, "global_batch_size": 16, "micro_batch_size": 2}, "faults": {"slow": {3: 3}}}
    t = {p: predict(cfg, p)["step_time_s"] for p in ("none", "dynamic_batch", "backup_workers")}
    assert t["dynamic_batch"] < t["none"] and t["backup_workers"] < t["none"]


def test_least_loaded_beats_round_robin_on_unequal_servers():
    speeds = [1, 1, 1, 1 / 3]
    rr = dispatch("round_robin", speeds, 0.6, 4000)
    wrr = dispatch("weighted_round_robin", speeds, 0.6, 4000)
    ll = dispatch("least_loaded", speeds, 0.6, 4000)
    assert ll["p99_s"] < wrr["p99_s"] < rr["p99_s"]


def test_a_step_waits_for_the_slowest_of_the_ranks_it_needs(tmp_path, monkeypatch):
    """On shared cores the slowest of k ranks falls `straggle[k]` behind (bench measures it); a step that
    waits for every rank is stretched by that, backup workers (which drop the slowest) by the lag of k - b."""
    from simulator.hardware import write_cpu_profile

    cfg = {"model": {"preset": "tiny"}, "seq_len": 64, "cluster": {"gpu": "cpu", "num_gpus": 4},
           "parallel": {"global_batch_size": 8, "micro_batch_size": 1}, "training": {"precision": "fp32"}}

    def compute(straggle, policy):
        path = tmp_path / f"cpu_{len(straggle)}.json"
        write_cpu_profile({"cores": 2, "effective_cores": {"1": 1, "2": 2, "4": 2}, "straggle": straggle}, str(path))
        monkeypatch.setenv("LLAMA_COURSE_CPU_PROFILE", str(path))
        return predict(cfg, policy)["compute_s"]

    assert compute({"2": 0.1, "4": 0.2}, "none") == pytest.approx(1.2 * compute({}, "none"))
    assert compute({"2": 0.1, "4": 0.2}, "backup_workers") == pytest.approx(1.15 * compute({}, "backup_workers"))
