"""The validation page's closed-form checks: the simulated ring all-reduce against 2(n-1)(alpha + S/(nB)) and
nccl-tests' bus bandwidth, each pipeline schedule's bubble against its formula, activation memory per layer
against Korthikanti et al. 2022. Tables for benchmarks/simulator_validation.py."""

from __future__ import annotations

from simulator.collectives import CommModel, bandwidths, run_collective
from simulator.config import load_config
from simulator.hardware import gpu_preset
from simulator.pipeline_parallel import bubble_fraction, simulate_pipeline
from simulator.topology import Cluster
from simulator.workload import activation_bytes_per_layer


def ring_table() -> str:
    cl = Cluster(gpu_preset("a100-80gb"), 8)
    alpha, b = cl.path_latency(0, 1), cl.bottleneck(0, 1)
    out = ["| ranks n | bytes S | simulated | 2(n-1)(alpha + S/(nB)) | busbw GB/s |", "|---:|---:|---:|---:|---:|"]
    for n, s in ((2, 1 << 20), (4, 1 << 26), (8, 1 << 30)):
        t = run_collective(cl, "all_reduce", range(n), s, "ring", exact=True)
        closed = 2 * (n - 1) * (alpha + s / (n * b))
        out.append(f"| {n} | {s:,} | {t * 1e3:.4f} ms | {closed * 1e3:.4f} ms | "
                   f"{bandwidths('all_reduce', n, s, t)[1] / 1e9:.1f} |")
    out += ["", "| GPUs | all-reduce 1 GiB busbw (simulated) | nccl-tests (published) |", "|---|---:|---:|"]
    for gpu, pub in (("a100-80gb", "about 230 GB/s"), ("h100-sxm", "about 370 GB/s (ring)")):
        t = CommModel(Cluster(gpu_preset(gpu), 8)).time("all_reduce", range(8), 1 << 30)
        out.append(f"| 8 x {gpu} | {bandwidths('all_reduce', 8, 1 << 30, t)[1] / 1e9:.0f} GB/s | {pub} |")
    return "\n".join(out)


def bubble_table() -> str:
    out = ["| schedule | p | m | v | simulated bubble | closed form |", "|---|---:|---:|---:|---:|---:|"]
    for sched, p, m, v in (("gpipe", 4, 8, 1), ("1f1b", 8, 32, 1), ("1f1b", 16, 64, 1),
                           ("interleaved_1f1b", 8, 32, 2), ("interleaved_1f1b", 16, 64, 4), ("zero_bubble", 8, 32, 1),
                           ("zero_bubble", 16, 64, 1)):
        run = simulate_pipeline(sched, p, m, v, [1.0 / v] * (p * v), [2.0 / v] * (p * v))
        sim = 1 - sum(run.busy) / (p * run.makespan)
        out.append(f"| {sched} | {p} | {m} | {v} | {sim:.5f} | {bubble_fraction(sched, p, m, v):.5f} |")
    out += ["", "(interleaved: (p-1)/(v m + p - 1) of the step, which is (p-1)/(v m) relative to the ideal time; "
            "zero bubble, the backward split into B 1 and W 1: (p-1)(t_F + t_B - t_W) = p - 1 idle of 3 m + p - 1.)"]
    return "\n".join(out)


def memory_table() -> str:
    m = load_config({"model": {"preset": "gpt-18.4b"}}).model
    s, b, h, a = 2048, 1, m.dim, m.n_heads
    sbh = s * b * h
    out = ["| case (GPT 18.4B, s 2048, b 1) | ours (bytes/layer) | Korthikanti et al. 2022 |", "|---|---:|---:|"]
    for label, t, kw, ref in (
            ("no parallelism", 1, {}, sbh * (34 + 5 * a * s / h)),
            ("tp 8", 8, {}, sbh * (10 + 24 / 8 + 5 * a * s / (h * 8))),
            ("tp 8 + sp", 8, {"sequence_parallel": True}, sbh * (34 / 8 + 5 * a * s / (h * 8))),
            ("tp 8 + sp + selective", 8, {"sequence_parallel": True, "recompute": "selective"}, sbh * 34 / 8),
            ("full recomputation", 8, {"recompute": "full"}, 2 * sbh)):
        ours = activation_bytes_per_layer(m, s, b, t, precision="fp16", **kw)
        out.append(f"| {label} | {ours:,.0f} | {ref:,.0f} |")
    return "\n".join(out)
