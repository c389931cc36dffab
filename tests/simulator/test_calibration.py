"""simulator/calibration.py: the arithmetic that turns `bench`'s raw measurements into the cpu profile."""

import pytest

from simulator.calibration import (
    MODEL_POINTS,
    derive_profile,
    effective_cores,
    fit_compute,
    median_raw,
    predicted_forward_backward,
    report_lines,
)
from simulator.hardware import Hardware


def test_bench_fit_recovers_a_known_machine():
    """fit_compute on times the simulator itself produced with known numbers gives those numbers back."""
    truth = Hardware(name="cpu", peak_flops={"fp32": 140e9, "fp16": 140e9, "bf16": 140e9}, memory_bytes=1e9,
                     memory_bandwidth=10e9, intra_bandwidth=1e9, intra_latency=0, inter_bandwidth=1e9,
                     inter_latency=0, matmul_efficiency=0.8, memory_efficiency=0.35, kernel_overhead=40e-6)
    points = []
    for preset, seq, mb in MODEL_POINTS:
        p = {"preset": preset, "seq_len": seq, "micro_batch": mb, "tensors": 39 if preset == "tiny" else 75,
             "params": 262720 if preset == "tiny" else 7901440}
        p["forward_backward_s"] = predicted_forward_backward(p, truth)
        p["rest_s"] = p["tensors"] * 50e-6 + p["params"] * 6e-9
        points.append(p)
    fit = fit_compute(points, 140e9, 10e9)
    assert fit["matmul_efficiency"] == pytest.approx(0.8, abs=0.03)
    assert fit["memory_efficiency"] == pytest.approx(0.35, abs=0.03)
    assert fit["kernel_overhead_us"] == pytest.approx(40, rel=0.1)
    assert max(abs(v) for v in fit["fit_residuals"].values()) < 0.02
    assert fit["optimizer_us_per_tensor"] == pytest.approx(50, rel=1e-6)
    assert fit["optimizer_ns_per_param"] == pytest.approx(6, rel=1e-6)


def test_effective_cores_is_k_t1_over_tk_capped_by_cores():
    assert effective_cores({"1": 1.0, "2": 1.0, "4": 2.2}, 2) == {"1": 1, "2": 2, "4": pytest.approx(4 / 2.2)}
    assert effective_cores({"1": 1.0, "4": 1.0}, 2)["4"] == 2          # 4 processes never get more than 2 cores
    assert effective_cores({"1": 1.0, "2": 0.9}, None)["2"] == 2        # faster than alone: noise, capped at k


def test_median_raw_takes_element_wise_medians_and_keeps_the_rest():
    raws = [{"a": 1.0, "b": [[4, 1.0]], "name": "x"}, {"a": 3.0, "b": [[4, 5.0]], "name": "y"},
            {"a": 2.0, "b": [[4, 3.0]], "name": "z"}]
    assert median_raw(raws) == {"a": 2.0, "b": [[4, 3.0]], "name": "x"}


def raw_measurement() -> dict:
    truth = Hardware(name="cpu", peak_flops={"fp32": 100e9, "fp16": 100e9, "bf16": 100e9}, memory_bytes=1e9,
                     memory_bandwidth=10e9, intra_bandwidth=1e9, intra_latency=0, inter_bandwidth=1e9,
                     inter_latency=0, matmul_efficiency=0.5, memory_efficiency=0.5, kernel_overhead=20e-6)
    steps = [{"preset": p, "seq_len": s, "micro_batch": b, "tensors": 39, "params": 262720, "rest_s": 0.002}
             for p, s, b in MODEL_POINTS]
    for pt in steps:
        pt["forward_backward_s"] = predicted_forward_backward(pt, truth)
    gloo = {"p2p_GBps": 2.0, "p2p_latency_us": 50.0, "allreduce_latency_us": 100.0, "allreduce_busbw_GBps": 1.0,
            "all_reduce_gloo": [[4, 1e-4]], "all_reduce_course": [[4, 2e-4]]}
    return {"matmul_gflops": {256: 80.0, 512: 100.0}, "model_shape_gflops": {"tiny": 50.0, "small": 60.0},
            "copy_GBps": 10.0, "kernel_overhead_us": 2.0, "model_steps": steps, "gloo_2": gloo,
            "gloo_4": {k: v for k, v in gloo.items() if not k.startswith("p2p")},
            "sharing_fb_s": {"1": 1.0, "2": 1.1, "4": 2.2}, "straggle": {"2": 0.05, "4": 0.1},
            "launch_2_processes_s": 3.0}


def test_derive_profile_reads_every_table_and_fits_the_machine():
    raw = raw_measurement()
    prof = derive_profile(raw, "2.13.0", 2)
    assert prof["peak_tflops"]["fp32"] == pytest.approx(0.1)
    assert prof["matmul_efficiency"] == pytest.approx(0.5, abs=0.03)
    assert prof["intra_node"] == {"bandwidth_GBps": 2.0, "latency_us": 50.0}
    assert prof["all_reduce_seconds"] == {"gloo": {"2": [[4, 1e-4]], "4": [[4, 1e-4]]},
                                          "course": {"2": [[4, 2e-4]], "4": [[4, 2e-4]]}}
    assert prof["effective_cores"]["4"] == pytest.approx(4 / 2.2) and prof["cores"] == 2
    assert "fit_residuals" in raw and "fit_residuals" not in prof
    lines = report_lines(raw, prof, "somewhere.json")
    assert lines[-1].startswith("profile written to somewhere.json") and any("core sharing" in x for x in lines)
