"""Calibration: from what `llama-course bench` measured to the simulator's `cpu` profile (no torch here).

`bench` (llama_course/commands/bench.py) only measures; this module turns its raw numbers into the
profile `simulator.hardware.cpu_from_profile` reads:

- `fit_attention`: PyTorch's fused causal attention timed alone, a fixed cost and a cost per score element;
- `fit_compute`: the per-kernel roofline fitted to the real model's forward + backward times (the matmul
  efficiency e_mm, the memory efficiency e_mem and the fixed seconds per simulated kernel), and the rest
  of a step (gradient norm, clipping, optimizer) as tensors x c + elements x d;
- `effective_cores`: k processes computing at once get k t1 / tk cores' worth of compute;
- `derive_profile`: peaks, bandwidths, the gloo tables and curves, the fit, core sharing and straggle;
- `median_raw`: element-wise medians of repeated benches (`bench --repeat N`);
- `report_lines`: the human summary `bench` prints.

    python -m pytest tests/simulator/test_calibration.py     # the fit recovers a machine it was given
"""

from __future__ import annotations

import functools
import statistics
import time

from simulator.compute import block_times, embedding_times, head_times
from simulator.config import load_config
from simulator.cpu_profile import attention_cost_of
from simulator.hardware import Hardware
from simulator.simulate import simulate
from simulator.workload import Op, attention_scores

MODEL_POINTS = (("tiny", 128, 1), ("tiny", 128, 4), ("small", 256, 1), ("small", 256, 4))
"""(preset, seq_len, micro_batch) of the real-model measurements the compute model is fitted on."""

ATTENTION_SHAPES = ((16, 64, 16), (8, 128, 16), (4, 256, 16), (2, 512, 16), (8, 128, 32), (4, 256, 32),
                    (8, 128, 64), (2, 512, 64))
"""(batch x heads, sequence length, head dim) at which `bench` times PyTorch's fused causal attention alone:
a grid around the CPU models' heads (16 and 32 wide), from which `fit_attention` fits its cost."""

SPEED_POINT = ("tiny", 128, 4)
"""(preset, seq_len, micro_batch) of the speed probe: one of MODEL_POINTS, so the profile predicts it."""


@functools.cache
def _model(preset: str):
    return load_config({"model": {"preset": preset}}).model


def predicted_forward_backward(point: dict, hw) -> float:
    """The simulator's forward + backward of one micro-batch on one process (what `point` measured:
    {"preset", "seq_len", "micro_batch"})."""
    m = _model(point["preset"])
    s, b = point["seq_len"], point["micro_batch"]
    blk = block_times(m, s, b, 1, False, "fp32", True, "none", hw)
    return m.n_layers * (blk.forward + blk.backward) + sum(head_times(m, s, b, 1, "fp32", hw)) \
        + sum(embedding_times(m, s, b, 1, "fp32", hw))


def _least_squares(rows: list, ys: list) -> list:
    """Non-negative least relative squares of ys ~ rows @ x (a few unknowns: every subset of them tried)."""
    n = len(rows[0])
    best = None
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        a = [[r[j] / y for j in cols] for r, y in zip(rows, ys)]      # relative: each row divided by its y
        ata = [[sum(ai[p] * ai[q] for ai in a) for q in range(len(cols))] for p in range(len(cols))]
        atb = [sum(ai[p] for ai in a) for p in range(len(cols))]
        try:
            sol = _solve(ata, atb)
        except ZeroDivisionError:
            continue
        if min(sol) < 0:
            continue
        x = [0.0] * n
        for j, v in zip(cols, sol):
            x[j] = v
        err = sum((sum(rj * xj for rj, xj in zip(r, x)) / y - 1) ** 2 for r, y in zip(rows, ys))
        if best is None or err < best[0]:
            best = (err, x)
    return best[1] if best else [0.0] * n


def _solve(a: list, b: list) -> list:
    """Gaussian elimination with partial pivoting (a small dense system); ZeroDivisionError when singular."""
    n = len(b)
    m = [row[:] + [bi] for row, bi in zip(a, b)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-300:
            raise ZeroDivisionError
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][j] * x[j] for j in range(r + 1, n))) / m[r][r]
    return x


def fit_attention(points: list) -> dict:
    """PyTorch's fused causal attention on this CPU: t = fixed + scores x (a + b x head_dim) for the forward and
    for the backward, non-negative least relative squares over what `bench` timed at ATTENTION_SHAPES
    (points: [{"bh", "seq_len", "head_dim", "forward_s", "backward_s"}]). scores: the score elements the
    kernel computes (`workload.attention_scores` on a CPU: its query blocks up to the diagonal). Its softmax
    (an exp per score) and its small per-head products run far below the matmul peak, so a share of that peak
    would price it at a fraction of its time, the more so the longer the sequence."""
    rows = []
    for p in points:
        scores, hd = attention_scores(Op("attention", "flash", 0.0, 0.0, shape=(p["bh"], p["seq_len"],
                                                                                  p["head_dim"], p["seq_len"])),
                                      cpu=True)
        rows.append([1.0, scores, scores * hd])
    out = {}
    for phase in ("forward", "backward"):
        fixed, a, b = _least_squares(rows, [p[f"{phase}_s"] for p in points])
        out[phase] = {"fixed_us": fixed * 1e6, "ns_per_score": a * 1e9, "ns_per_score_dim": b * 1e9}
    return out


def fit_compute(points: list, peak_flops: float, memory_bandwidth: float, attention: dict | None = None) -> dict:
    """Fit the simulator's per-kernel roofline to the measured forward + backward times, and the optimizer.

    Three numbers, least relative squares over the points: the matmul efficiency e_mm (share of the square
    matmul peak), the memory efficiency e_mem (share of the copy bandwidth that eager element-wise ops reach:
    an unfused RMSNorm makes ~7 passes over its input where a fused kernel makes 2) and the fixed seconds o
    per simulated kernel (o is linear and solved for; e_mm and e_mem are searched on a grid). Attention, when
    `attention` (fit_attention's) is given, is the measured kernel's cost, not fitted again here. The rest
    of a step (gradient norm, clipping, optimizer) is fitted as tensors x c + elements x d."""
    def hw(e, em, o):
        return Hardware(name="cpu", peak_flops={"fp32": peak_flops, "fp16": peak_flops, "bf16": peak_flops},
                        memory_bytes=1e9, memory_bandwidth=memory_bandwidth, intra_bandwidth=1e9,
                        intra_latency=0, inter_bandwidth=1e9, inter_latency=0, matmul_efficiency=e,
                        memory_efficiency=em, kernel_overhead=o, attention_cost=attention_cost_of(attention))

    t = [p["forward_backward_s"] for p in points]
    w = [1 / ti**2 for ti in t]
    kernels = [predicted_forward_backward(p, hw(1.0, 1.0, 1.0)) - predicted_forward_backward(p, hw(1.0, 1.0, 0.0))
               for p in points]
    grid = [i / 40 for i in range(2, 41)]
    best = None
    for e in grid:
        for em in grid:
            a = [predicted_forward_backward(p, hw(e, em, 0.0)) for p in points]
            o = max(0.0, sum(wi * ni * (ti - ai) for wi, ni, ti, ai in zip(w, kernels, t, a))
                    / sum(wi * ni * ni for wi, ni in zip(w, kernels)))
            err = sum(((ai + ni * o - ti) / ti) ** 2 for ai, ni, ti in zip(a, kernels, t))
            if best is None or err < best[0]:
                best = (err, e, em, o)
    _, e, em, o = best
    residuals = {f"{p['preset']} mb {p['micro_batch']}": predicted_forward_backward(p, hw(e, em, o))
                 / p["forward_backward_s"] - 1 for p in points}
    # rest of a step = tensors x c + elements x d (two unknowns, least squares over the points)
    sxx = sum(p["tensors"] ** 2 for p in points)
    syy = sum(p["params"] ** 2 for p in points)
    sxy = sum(p["tensors"] * p["params"] for p in points)
    bx = sum(p["tensors"] * p["rest_s"] for p in points)
    by = sum(p["params"] * p["rest_s"] for p in points)
    det = sxx * syy - sxy * sxy
    c, d = ((syy * bx - sxy * by) / det, (sxx * by - sxy * bx) / det) if det else (0.0, 0.0)
    return {"matmul_efficiency": e, "memory_efficiency": em, "kernel_overhead_us": o * 1e6, "fit_residuals": residuals,
            "optimizer_us_per_tensor": max(0.0, c) * 1e6, "optimizer_ns_per_param": max(0.0, d) * 1e9}


def effective_cores(sharing_s: dict, cores: int | None) -> dict:
    """k processes computing at once get k x t1 / tk cores' worth of compute between them, at most
    min(k, cores) (more is noise in the one-process baseline). sharing_s: {"k": seconds per step}."""
    return {k: min(int(k), cores or int(k), int(k) * sharing_s["1"] / t) for k, t in sharing_s.items()}


def median_raw(raws: list):
    """Element-wise median of several raw measurements (dicts and lists of numbers, same shape)."""
    first = raws[0]
    if isinstance(first, dict):
        return {k: median_raw([r[k] for r in raws]) for k in first}
    if isinstance(first, list):
        return [median_raw([r[i] for r in raws]) for i in range(len(first))]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(raws)
    return first


def derive_profile(raw: dict, torch_version: str, cores: int | None) -> dict:
    """The `cpu` profile from raw measurements: peaks, bandwidths, gloo table, and the fitted compute model.
    Moves the fit's residuals into `raw["fit_residuals"]` (they describe the fit, not the machine)."""
    peak = max(raw["matmul_gflops"].values())
    g2, g4 = raw["gloo_2"], raw["gloo_4"]
    attention = fit_attention(raw["attention"]) if raw.get("attention") else None
    fit = fit_compute(raw["model_steps"], peak * 1e9, raw["copy_GBps"] * 1e9, attention)
    raw["fit_residuals"] = fit.pop("fit_residuals")
    if attention:
        fit["attention"] = attention
        # the fit as it would be with attention at the roofline: what leaving the term out means
        # (benchmarks/cpu_terms.py judges the term on the compare suite runs with it)
        blind = fit_compute(raw["model_steps"], peak * 1e9, raw["copy_GBps"] * 1e9)
        fit["without_attention"] = {k: blind[k] for k in ("matmul_efficiency", "memory_efficiency",
                                                          "kernel_overhead_us")}
    return {
        "name": "cpu",
        "note": f"measured by `llama-course bench` on {time.strftime('%Y-%m-%d')} ({cores} cores, "
                f"torch {torch_version}, median of {raw.get('repeats', 1)} runs); per process, one thread; "
                f"matmul_efficiency, memory_efficiency, kernel_overhead_us and optimizer_* fitted on the real "
                f"model's forward-backward timed inside single-process train steps (calibration.fit_compute), "
                f"fused attention's cost on its own kernel timed alone (fit_attention); "
                f"effective_cores from 1, 2 and 4 processes computing at once, straggle from them started together; "
                f"all-reduce curves in situ "
                f"(after compute) and back to back, p2p and RPC round trips in situ, each the mean over bursts",
        "peak_tflops": {"fp32": peak / 1e3, "bf16": peak / 1e3 / 4, "fp16": peak / 1e3 / 8},
        "memory_bandwidth_GBps": raw["copy_GBps"],
        **fit,
        "intra_node": {"bandwidth_GBps": g2["p2p_GBps"], "latency_us": g2["p2p_latency_us"]},
        "allreduce": {"latency_us_2": g2["allreduce_latency_us"], "busbw_GBps_2": g2["allreduce_busbw_GBps"],
                      "latency_us_4": g4["allreduce_latency_us"], "busbw_GBps_4": g4["allreduce_busbw_GBps"]},
        "all_reduce_seconds": {impl: {str(w): raw[f"gloo_{w}"][f"all_reduce_{impl}"] for w in (2, 4)
                                      if f"all_reduce_{impl}" in raw[f"gloo_{w}"]} for impl in ("gloo", "course")},
        "all_reduce_back_to_back_seconds": {
            impl: {str(w): raw[f"gloo_{w}"][f"all_reduce_back_to_back_{impl}"] for w in (2, 4)
                   if f"all_reduce_back_to_back_{impl}" in raw[f"gloo_{w}"]} for impl in ("gloo", "course")},
        "rpc_round_trip_seconds": raw.get("rpc_round_trip"),
        "launch_s": raw["launch_2_processes_s"],
        "effective_cores": effective_cores(raw["sharing_fb_s"], cores) if "sharing_fb_s" in raw else None,
        "straggle": raw.get("straggle"),
        "cores": cores,
    }


def _size(nbytes: float) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def report_lines(raw: dict, prof: dict, path: str) -> list:
    """What `bench` prints: the measurements, the fit and its residuals, where the profile went."""
    lines = [
        f"matmul (fp32, 1 thread): {', '.join(f'{n}^3 {g:.0f}' for n, g in raw['matmul_gflops'].items())} GFLOP/s",
        f"model shapes fwd+bwd:    tiny {raw['model_shape_gflops']['tiny']:.0f}, "
        f"small {raw['model_shape_gflops']['small']:.0f} GFLOP/s",
        f"memory copy:             {raw['copy_GBps']:.1f} GB/s;  kernel overhead {raw['kernel_overhead_us']:.1f} us"]
    for pt in raw["model_steps"]:
        lines.append(f"{pt['preset']:>5} mb {pt['micro_batch']}: forward+backward {pt['forward_backward_s'] * 1e3:7.1f} "
                     f"ms, rest of the step {pt['rest_s'] * 1e3:6.1f} ms")
    lines.append(f"fitted: matmul efficiency {prof['matmul_efficiency']:.2f}, memory efficiency "
                 f"{prof['memory_efficiency']:.2f}, {prof['kernel_overhead_us']:.1f} us per simulated kernel, "
                 f"optimizer {prof['optimizer_us_per_tensor']:.0f} us/tensor + {prof['optimizer_ns_per_param']:.2f} "
                 "ns/param; residuals " + ", ".join(f"{k} {v:+.0%}" for k, v in raw["fit_residuals"].items()))
    for phase, c in (prof.get("attention") or {}).items():
        lines.append(f"attention {phase:>8}:      {c['fixed_us']:.0f} us + ({c['ns_per_score']:.2f} + "
                     f"{c['ns_per_score_dim']:.3f} x head dim) ns per score computed")
    for w in (2, 4):
        g = raw[f"gloo_{w}"]
        p2p = f"p2p {g['p2p_latency_us']:.0f} us, {g['p2p_GBps']:.2f} GB/s; " if "p2p_GBps" in g else ""
        lines.append(f"gloo {w} processes:       {p2p}all_reduce {g['allreduce_latency_us']:.0f} us, "
                     f"busbw {g['allreduce_busbw_GBps']:.2f} GB/s")
    for w, curve in (prof.get("rpc_round_trip_seconds") or {}).items():
        lines.append(f"rpc round trip, {w} worker{'s' if w != '1' else ''}: "
                     + ", ".join(f"{_size(b)} {t * 1e3:.2f} ms" for b, t in curve))
    if prof.get("straggle"):
        lines.append("slowest of k behind:     " + ", ".join(f"{k} processes {f:+.1%}"
                                                              for k, f in prof["straggle"].items()))
    if prof.get("effective_cores"):
        lines.append("core sharing:            " + ", ".join(f"{k} processes get {c:.2f} cores"
                                                              for k, c in prof["effective_cores"].items()))
    lines.append(f"launch 2 processes:      {raw['launch_2_processes_s']:.1f} s")
    lines.append(f"profile written to {path} (peak {prof['peak_tflops']['fp32'] * 1e3:.0f} GFLOP/s fp32 per process)")
    return lines


def calibrate_gpu_profile(preset: str, runs: list, matmul_tflops: float | None = None,
                          copy_GBps: float | None = None, date: str | None = None) -> dict | None:
    """A GPU profile for `preset` from measured runs (`scripts/gpu_check.sh`): the matmul efficiency e for
    which the simulator's step time of the fastest ~1B-parameter run equals the measured step (bisection;
    step time falls as e rises), with the measured copy bandwidth. One number per GPU type, from one run.
    runs: [{"name", "overrides", "step_time_s"} | {"name", "error"}]; None when no ~1B run succeeded."""
    usable = [r for r in runs if "error" not in r and "llama-1b" in r["name"] and r.get("step_time_s")]
    if not usable:
        return None
    best = min(usable, key=lambda r: r["step_time_s"])
    base = best["overrides"] + [f"cluster.gpu={preset}", "cluster.num_gpus=1"]
    if copy_GBps:
        base.append(f"cluster.memory_bandwidth_GBps={copy_GBps}")

    def step(e):
        return simulate(load_config(None, base + [f"cluster.compute_efficiency={e}"]))["step_time_s"]

    lo, hi = 0.05, 1.0
    if step(hi) > best["step_time_s"]:
        lo = hi                                   # faster than the model allows even at e = 1
    elif step(lo) < best["step_time_s"]:
        hi = lo
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if step(mid) < best["step_time_s"] else (mid, hi)
    e = round((lo + hi) / 2, 4)
    profile = {"name": preset, "matmul_efficiency": e,
               "note": f"calibrated by scripts/gpu_check.sh on {date or time.strftime('%Y-%m-%d')} from "
                       f"'{best['name']}' ({best['step_time_s'] * 1e3:.1f} ms per step)"}
    if copy_GBps:
        profile["memory_bandwidth_GBps"] = copy_GBps
    if matmul_tflops:
        profile["measured_matmul_tflops"] = matmul_tflops
    return profile
