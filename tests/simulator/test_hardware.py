import json

import pytest

from simulator.config import ConfigError, load_config
from simulator.hardware import (
    GIB,
    H100_MATMUL_EFFICIENCY,
    MATMUL_EFFICIENCY,
    cpu_from_profile,
    gpu_preset,
    hardware_for,
    write_cpu_profile,
)


def test_presets_match_datasheets():
    a100 = gpu_preset("a100-80gb")
    assert a100.peak("bf16") == a100.peak("fp16") == 312e12
    assert a100.peak("fp32") == 19.5e12
    assert a100.memory_bytes == 80 * GIB
    h100, h200 = gpu_preset("h100-sxm"), gpu_preset("h200")
    assert h100.peak("bf16") == h200.peak("bf16") == 989e12
    assert h200.memory_bytes > h100.memory_bytes
    assert h200.memory_bandwidth > h100.memory_bandwidth > a100.memory_bandwidth
    # one calibration per GPU generation (A100 on Megatron-LM Table 1, H100/H200 on the MPT H100 rows), not a
    # per-row fit
    assert a100.matmul_efficiency == gpu_preset("a100-40gb").matmul_efficiency == MATMUL_EFFICIENCY
    assert h100.matmul_efficiency == h200.matmul_efficiency == H100_MATMUL_EFFICIENCY
    assert (a100.sm_count, h100.sm_count, h200.sm_count) == (108, 132, 132)          # datasheets


def test_config_overrides_every_value():
    cfg = load_config({"cluster": {"gpu": "a100-80gb", "num_gpus": 8, "peak_tflops": 100, "memory_GB": 10,
                                   "memory_bandwidth_GBps": 1000, "compute_efficiency": 0.5,
                                   "intra_node": {"bandwidth_GBps": 50, "latency_us": 7},
                                   "inter_node": {"bandwidth_GBps": 5, "latency_us": 9,
                                                  "topology": "rail_optimized"}},
                       "training": {"precision": "bf16"}})
    hw = hardware_for(cfg)
    assert hw.peak("bf16") == 100e12 and hw.memory_bytes == 10e9 and hw.memory_bandwidth == 1000e9
    assert hw.matmul_efficiency == 0.5
    assert (hw.intra_bandwidth, hw.intra_latency) == (50e9, 7e-6)
    assert (hw.inter_bandwidth, hw.inter_latency) == (5e9, 9e-6)
    assert hw.topology == "rail_optimized"


def test_cpu_profile_is_read_and_extended(tmp_path):
    path = tmp_path / "cpu.json"
    hw = cpu_from_profile(str(path))            # missing file: the shipped defaults
    assert 0 < hw.peak("fp32") < 1e12 and hw.memory_shared
    write_cpu_profile({"peak_tflops": {"fp32": 0.2}, "memory_bandwidth_GBps": 20}, str(path))
    hw2 = cpu_from_profile(str(path))
    assert hw2.peak("fp32") == 0.2e12 and hw2.memory_bandwidth == 20e9
    assert json.loads(path.read_text())["intra_node"]["latency_us"] > 0
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        cpu_from_profile(str(path))


def test_cpu_memory_is_shared_between_processes():
    from simulator.hardware import device_memory

    hw = hardware_for(load_config({"cluster": {"gpu": "cpu", "num_gpus": 4}}))
    assert device_memory(hw) == pytest.approx(hw.memory_bytes / 4)


def _measured_cpu(tmp_path, monkeypatch, **extra):
    path = tmp_path / "cpu.json"
    write_cpu_profile({"allreduce": {"latency_us_2": 100, "busbw_GBps_2": 0.5, "latency_us_4": 500,
                                     "busbw_GBps_4": 0.25}, "cores": 2, **extra}, str(path))
    monkeypatch.setenv("LLAMA_COURSE_CPU_PROFILE", str(path))
    return path


def test_cpu_collectives_come_from_the_measured_gloo_table(tmp_path, monkeypatch):
    from simulator.collectives import CommModel
    from simulator.topology import Cluster

    _measured_cpu(tmp_path, monkeypatch)
    hw = gpu_preset("cpu")
    assert set(hw.collective_table) == {2, 4}
    mb = 1e6
    # nccl-tests convention: t = latency + 2(n-1)/n S / busbw for all-reduce, (n-1)/n S for the halves
    assert hw.measured_collective("all_reduce", 2, mb) == pytest.approx(100e-6 + mb / 0.5e9)
    assert hw.measured_collective("all_reduce", 4, mb) == pytest.approx(500e-6 + 1.5 * mb / 0.25e9)
    # the halves: the fixed cost (the curve at 0 bytes) once, half of the size-dependent rest
    fixed = hw.measured_collective("all_reduce", 4, 0.0)
    assert fixed == pytest.approx(500e-6)
    assert hw.measured_collective("reduce_scatter", 4, mb) == pytest.approx(
        fixed + (hw.measured_collective("all_reduce", 4, mb) - fixed) / 2)
    between = hw.measured_collective("all_reduce", 3, mb)          # interpolated between 2 and 4
    assert hw.measured_collective("all_reduce", 2, mb) < between < hw.measured_collective("all_reduce", 4, mb)
    assert hw.measured_collective("send", 2, mb) is None and hw.measured_collective("all_reduce", 1, mb) is None
    comm = CommModel(Cluster(hw, 4))
    assert comm.time("all_reduce", range(4), mb) == pytest.approx(hw.measured_collective("all_reduce", 4, mb))
    assert comm.time("send", (0, 1), mb) > 0                        # point to point: still the links


def test_more_cpu_processes_than_cores_time_share(tmp_path, monkeypatch):
    from simulator.compute import op_time
    from simulator.workload import layer_ops

    _measured_cpu(tmp_path, monkeypatch)
    two = hardware_for(load_config({"cluster": {"gpu": "cpu", "num_gpus": 2}}))
    four = hardware_for(load_config({"cluster": {"gpu": "cpu", "num_gpus": 4}}))
    assert two.compute_slowdown == 1.0 and four.compute_slowdown == 2.0
    op = layer_ops(load_config({}).model, 128, 4, precision="fp32")[1]
    assert op_time(op, four, "fp32") == pytest.approx(2 * op_time(op, two, "fp32"))
    # GPUs are one device per rank: no sharing
    gpus = load_config({"cluster": {"gpu": "a100-80gb", "num_gpus": 8}, "parallel": {"global_batch_size": 8}})
    assert hardware_for(gpus).compute_slowdown == 1.0


def test_cpu_optimizer_costs_per_tensor_and_per_element(tmp_path, monkeypatch):
    from simulator.compute import optimizer_time

    _measured_cpu(tmp_path, monkeypatch, optimizer_us_per_tensor=50, optimizer_ns_per_param=5)
    hw = gpu_preset("cpu")
    assert optimizer_time(1e6, "fp32", "adamw", hw, tensors=40) == pytest.approx(40 * 50e-6 + 1e6 * 5e-9)


def test_a_measured_gpu_profile_calibrates_only_its_preset(tmp_path, monkeypatch):
    path = tmp_path / "h200_profile.json"
    path.write_text(json.dumps({"name": "h200", "matmul_efficiency": 0.55, "memory_bandwidth_GBps": 4000}))
    monkeypatch.setenv("LLAMA_COURSE_GPU_PROFILE", str(path))
    h200 = gpu_preset("h200")
    assert h200.matmul_efficiency == 0.55 and h200.memory_bandwidth == 4000e9
    assert h200.peak("bf16") == 989e12                              # what the profile does not say stays
    assert gpu_preset("h100-sxm").matmul_efficiency == H100_MATMUL_EFFICIENCY != 0.55
    monkeypatch.delenv("LLAMA_COURSE_GPU_PROFILE")
    assert gpu_preset("h200").matmul_efficiency != 0.55


def test_measured_all_reduce_curves_by_implementation(tmp_path, monkeypatch):
    """Curves of time against size: interpolated in bytes, chosen by parallel.implementation."""
    path = tmp_path / "cpu.json"
    write_cpu_profile({"cores": 2, "all_reduce_seconds": {
        "gloo": {"2": [[4, 1e-4], [1e6, 1e-3], [4e6, 7e-3]]},
        "course": {"2": [[4, 2e-4], [1e6, 2e-3], [4e6, 1e-2]]}}}, str(path))
    monkeypatch.setenv("LLAMA_COURSE_CPU_PROFILE", str(path))
    base = {"cluster": {"gpu": "cpu", "num_gpus": 2}}
    torch_hw = hardware_for(load_config({**base, "parallel": {"implementation": "torch"}}))
    course_hw = hardware_for(load_config({**base, "parallel": {"implementation": "course"}}))
    assert torch_hw.measured_collective("all_reduce", 2, 1e6) == pytest.approx(1e-3)
    assert course_hw.measured_collective("all_reduce", 2, 1e6) == pytest.approx(2e-3)
    assert torch_hw.measured_collective("all_reduce", 2, 2.5e6) == pytest.approx(4e-3)    # between points
    assert torch_hw.measured_collective("all_reduce", 2, 7e6) == pytest.approx(13e-3)    # last slope goes on
    # all-gather: the fixed cost at 0 bytes (~1e-4) once, half of the rest
    assert torch_hw.measured_collective("all_gather", 2, 1e6) == pytest.approx(1e-4 + 0.9e-3 / 2, rel=1e-5)


def test_cpu_core_sharing_and_back_to_back_collectives_as_measured(tmp_path, monkeypatch):
    """`bench` measures how many cores' worth k processes get together, and collectives both in situ
    (after compute, the default) and back to back; the simulator uses each where it applies."""
    from simulator.config import load_config
    from simulator.hardware import hardware_for

    curve = {"course": {"2": [[4, 2e-3], [1e6, 4e-3]]}, "gloo": {"2": [[4, 1e-3], [1e6, 3e-3]]}}
    chained = {"course": {"2": [[4, 5e-4], [1e6, 2.5e-3]]}}
    _measured_cpu(tmp_path, monkeypatch, effective_cores={"1": 1.0, "2": 1.9, "4": 1.6},
                  all_reduce_seconds=curve, all_reduce_back_to_back_seconds=chained)
    hw = gpu_preset("cpu")
    assert hw.sharing_slowdown(1) == 1.0
    assert hw.sharing_slowdown(2) == pytest.approx(2 / 1.9)
    assert hw.sharing_slowdown(4) == pytest.approx(4 / 1.6)           # not the ideal 2
    assert hw.sharing_slowdown(8) == pytest.approx(8 / 1.6)           # saturated beyond the last measurement
    cfg = load_config({"model": {"preset": "tiny"}, "cluster": {"gpu": "cpu", "num_gpus": 4}})
    assert hardware_for(cfg).compute_slowdown == pytest.approx(2.5)
    hw = hardware_for(load_config({"model": {"preset": "tiny"}, "cluster": {"gpu": "cpu", "num_gpus": 2},
                                   "parallel": {"implementation": "course"}}))
    assert hw.measured_collective("all_reduce", 2, 4) == pytest.approx(2e-3)
    assert hw.measured_collective("all_reduce", 2, 4, back_to_back=True) == pytest.approx(5e-4)
    gloo = hardware_for(load_config({"model": {"preset": "tiny"}, "cluster": {"gpu": "cpu", "num_gpus": 2},
                                     "parallel": {"implementation": "torch"}}))
    assert gloo.measured_collective("all_reduce", 2, 4, back_to_back=True) == pytest.approx(1e-3)  # no chained curve


def test_measured_rpc_and_speed_factor_and_sends_on_the_link(tmp_path, monkeypatch):
    """A parameter server's round trip comes from `bench`'s curves and a pipeline's send from the link (its
    measured curve was dropped: docs/benchmarks/cpu_terms.md);
    speed_factor (what `compare --calibrate` measures) scales every compute time, the optimizer's too."""
    from simulator.compute import op_time, optimizer_time
    from simulator.workload import layer_ops

    _measured_cpu(tmp_path, monkeypatch, p2p_in_situ_seconds=[[4, 5e-4], [1 << 20, 1.5e-3]],   # an old profile's
                  rpc_round_trip_seconds={"1": [[1024, 2e-3], [1 << 20, 3e-3]], "2": [[1024, 4e-3], [1 << 20, 6e-3]]},
                  optimizer_us_per_tensor=50, optimizer_ns_per_param=5)
    hw = gpu_preset("cpu")
    assert hw.measured_collective("send", 2, 1 << 19) is None                # alpha-beta on the link, curve or not
    assert hw.rpc_round_trip(1, 1024) == pytest.approx(2e-3)
    assert hw.rpc_round_trip(2, 1 << 20) == pytest.approx(6e-3)
    assert hw.rpc_round_trip(4, 1 << 20) == pytest.approx(12e-3)           # the server answers twice as many
    # an old profile with one curve reads as one worker's
    _measured_cpu(tmp_path, monkeypatch, rpc_round_trip_seconds=[[1024, 2e-3], [1 << 20, 3e-3]])
    assert gpu_preset("cpu").rpc_round_trip(1, 1024) == pytest.approx(2e-3)

    cfg = load_config({"model": {"preset": "tiny"}, "cluster": {"gpu": "cpu", "num_gpus": 2}})
    _measured_cpu(tmp_path, monkeypatch, optimizer_us_per_tensor=50, optimizer_ns_per_param=5)
    base = hardware_for(cfg)
    _measured_cpu(tmp_path, monkeypatch, optimizer_us_per_tensor=50, optimizer_ns_per_param=5, speed_factor=1.25)
    slow = hardware_for(cfg)
    op = layer_ops(cfg.model, 128, 4, precision="fp32")[1]
    assert op_time(op, slow, "fp32") == pytest.approx(1.25 * op_time(op, base, "fp32"))
    assert optimizer_time(1e6, "fp32", "adamw", slow, tensors=40) == pytest.approx(
        1.25 * optimizer_time(1e6, "fp32", "adamw", base, tensors=40))


def test_the_slowest_of_processes_sharing_cores_sets_the_pace(tmp_path, monkeypatch):
    """`bench` measures how far the slowest of k processes started together falls behind their mean; the
    step waits for it, so compute on the critical path is that much slower (cpu only)."""
    _measured_cpu(tmp_path, monkeypatch, effective_cores={"1": 1.0, "2": 2.0, "4": 2.0},
                  straggle={"2": 0.02, "4": 0.2})
    hw = gpu_preset("cpu")
    assert hw.straggle_factor(1) == 1.0
    assert hw.straggle_factor(2) == pytest.approx(1.02) and hw.straggle_factor(4) == pytest.approx(1.2)
    assert hw.straggle_factor(3) == pytest.approx(1.11) and hw.straggle_factor(8) == pytest.approx(1.2)
    four = hardware_for(load_config({"model": {"preset": "tiny"}, "cluster": {"gpu": "cpu", "num_gpus": 4}}))
    assert four.compute_slowdown == pytest.approx(2.0 * 1.2)
    gpus = load_config({"cluster": {"gpu": "a100-80gb", "num_gpus": 8}, "parallel": {"global_batch_size": 8}})
    assert hardware_for(gpus).compute_slowdown == 1.0


def test_memory_reserve_is_kept_from_the_run():
    """CUDA context, NCCL buffers and fragmentation: 2 GB + 5% of device memory by default, configurable;
    a layout that needs more than what is left does not fit, even below the device's memory."""
    from simulator.hardware import device_memory
    from simulator.simulate import simulate

    hw = hardware_for(load_config({"cluster": {"gpu": "a100-80gb", "num_gpus": 8}}))
    assert device_memory(hw) == pytest.approx(80 * GIB - (2e9 + 0.05 * 80 * GIB))
    assert 6.2e9 < hw.memory_reserve < 6.4e9
    none = hardware_for(load_config({"cluster": {"gpu": "a100-80gb", "num_gpus": 8, "memory_reserve_GB": 0}}))
    assert device_memory(none) == 80 * GIB
    assert device_memory(hardware_for(load_config({"cluster": {"gpu": "cpu", "num_gpus": 2}}))) > 0
    with pytest.raises(ConfigError):
        load_config({"cluster": {"memory_reserve_GB": -1}})
    base = {"model": {"preset": "llama-7b"}, "seq_len": 2048, "cluster": {"gpu": "a100-80gb", "num_gpus": 8},
            "parallel": {"global_batch_size": 8, "zero_stage": 1}}
    need = simulate(load_config(base, ["cluster.memory_reserve_GB=0"]))["memory_per_gpu_bytes"]["total"]
    room = (80 * GIB - need) / 1e9
    assert simulate(load_config(base, [f"cluster.memory_reserve_GB={room * 0.9}"]))["fits_in_memory"]
    r = simulate(load_config(base, [f"cluster.memory_reserve_GB={room * 1.1}"]))
    assert not r["fits_in_memory"] and r["memory_reserve_bytes"] == pytest.approx(room * 1.1e9)


def test_straggle_is_read_as_the_mean_ranks_wait(tmp_path, monkeypatch):
    """The slowest of k processes sets the step, but `compare` averages each component over ranks: the mean
    rank computes 1/s of the slowest's time and waits the rest in the next collective. Compute reads as
    without straggle; the step is longer by at least the wait, which reads as exposed communication."""
    from simulator.simulate import simulate

    cfg = load_config({"model": {"preset": "tiny"}, "cluster": {"gpu": "cpu", "num_gpus": 2},
                       "parallel": {"dp": 2, "micro_batch_size": 4, "global_batch_size": 16}})
    _measured_cpu(tmp_path, monkeypatch, straggle={"2": 0.0})
    even = simulate(cfg)
    _measured_cpu(tmp_path, monkeypatch, straggle={"2": 0.25})
    skew = simulate(cfg)
    b0, b1 = even["breakdown_s"], skew["breakdown_s"]
    assert b1["compute"] == pytest.approx(b0["compute"], rel=1e-9)
    assert b1["exposed_comm"] - b0["exposed_comm"] >= 0.2 * b0["compute"]
    assert skew["step_time_s"] - even["step_time_s"] >= 0.2 * b0["compute"]
