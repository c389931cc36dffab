"""`llama-course bench [--json] [--out FILE] [--quick]`: measure this machine, write the `cpu` hardware profile.

    llama-course bench                 # about a minute; writes ~/.cache/llama-course/cpu_profile.json
    llama-course simulate configs/tiny.yaml   # `cluster.gpu: cpu` now predicts with what was measured

What it measures, each the median of several repeats (one thread per process, as training ranks run):

- matmul throughput: square fp32 products (the machine's practical peak) and the forward + backward
  products at the `tiny` and `small` models' real shapes (what a rank really reaches);
- memory bandwidth: a large tensor copy (bytes read + written per second);
- kernel overhead: the time of an element-wise op on a tiny tensor (launch + dispatch cost);
- gloo: point-to-point latency (ping-pong of 4 bytes / 2) and bandwidth (16 MiB), all_reduce latency and
  bus bandwidth (nccl-tests' busbw = algbw x 2(n-1)/n) with 2 and 4 processes;
- process launch: spawning 2 processes that join a process group and exit.

The profile keys are those `simulator.hardware.cpu_from_profile` reads. On a GPU machine, pass --gpu to
measure the device instead (bf16 matmul peak, HBM copy bandwidth) for calibrating its preset.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_gflops(n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _median_time(lambda: a @ b, repeats) / 1e9


def model_shape_gflops(preset: str, tokens: int, repeats: int = 5) -> float:
    """Forward + backward of one block's matmuls at a model's shapes (what training ranks multiply)."""
    import torch

    from simulator.config import load_config

    m = load_config({"model": {"preset": preset}}).model
    kv = m.n_kv_heads * m.dim // m.n_heads
    shapes = [(m.dim, m.dim), (m.dim, kv), (m.dim, kv), (m.dim, m.dim), (m.dim, m.ffn_dim), (m.dim, m.ffn_dim),
              (m.ffn_dim, m.dim)]
    ws = [torch.randn(i, o, requires_grad=True) for i, o in shapes]
    xs = [torch.randn(tokens, i, requires_grad=True) for i, _ in shapes]

    def step():
        for x, w in zip(xs, ws):
            (x @ w).sum().backward()

    flops = sum(3 * 2 * tokens * i * o for i, o in shapes)
    return flops / _median_time(step, repeats) / 1e9


def copy_gbps(n_bytes: int = 64 << 20, repeats: int = 5) -> float:
    import torch

    a = torch.empty(n_bytes // 4)
    b = torch.randn(n_bytes // 4)
    return 2 * n_bytes / _median_time(lambda: a.copy_(b), repeats) / 1e9


def kernel_overhead_us(repeats: int = 2000) -> float:
    import torch

    x = torch.randn(16)

    def run():
        for _ in range(repeats):
            x.add_(1.0)

    return _median_time(run, 5) / repeats * 1e6


def gloo_worker(rank: int, world: int, quick: bool) -> dict:
    """Runs in each spawned process: p2p and all_reduce latency and bandwidth over gloo."""
    import torch
    import torch.distributed as dist

    out = {}
    reps = 10 if quick else 30
    small = torch.zeros(1)
    big = torch.zeros((16 << 20) // 4)
    if world == 2:
        def ping(t):
            if rank == 0:
                dist.send(t, 1)
                dist.recv(t, 1)
            else:
                dist.recv(t, 0)
                dist.send(t, 0)
        dist.barrier()
        out["p2p_latency_us"] = _median_time(lambda: ping(small), reps) / 2 * 1e6
        dist.barrier()
        out["p2p_GBps"] = big.numel() * 4 * 2 / _median_time(lambda: ping(big), max(3, reps // 5)) / 1e9
    dist.barrier()
    out["allreduce_latency_us"] = _median_time(lambda: dist.all_reduce(small), reps) * 1e6
    dist.barrier()
    t = _median_time(lambda: dist.all_reduce(big), max(3, reps // 5))
    out["allreduce_busbw_GBps"] = big.numel() * 4 / t * 2 * (world - 1) / world / 1e9
    return out


def _noop(rank: int, world: int) -> int:
    return rank


def default_profile_path() -> str:
    from simulator.hardware import user_cpu_profile_path

    return user_cpu_profile_path()


def measure(quick: bool = False, progress: bool = True) -> dict:
    """Every measurement of the machine, as a dict (raw numbers and the derived profile)."""
    import torch
    from tqdm import tqdm

    from llama_course.testing import spawn

    torch.set_num_threads(1)
    steps = ["matmul", "model shapes", "memory", "kernel overhead", "gloo 2 processes", "gloo 4 processes",
             "process launch"]
    bar = tqdm(steps, desc="bench", disable=not progress, file=sys.stderr)
    raw: dict = {}
    for name in bar:
        bar.set_postfix_str(name)
        if name == "matmul":
            raw["matmul_gflops"] = {n: matmul_gflops(n) for n in ((256, 512) if quick else (256, 512, 1024))}
        elif name == "model shapes":
            raw["model_shape_gflops"] = {"tiny": model_shape_gflops("tiny", 512),
                                         "small": model_shape_gflops("small", 512)}
        elif name == "memory":
            raw["copy_GBps"] = copy_gbps()
        elif name == "kernel overhead":
            raw["kernel_overhead_us"] = kernel_overhead_us()
        elif name.startswith("gloo"):
            world = int(name.split()[1])
            results = spawn(gloo_worker, world, quick, timeout=120)
            raw[f"gloo_{world}"] = {k: statistics.median(r[k] for r in results if k in r) for k in results[0]}
        elif name == "process launch":
            t = time.perf_counter()
            spawn(_noop, 2, timeout=60)
            raw["launch_2_processes_s"] = time.perf_counter() - t
    peak = max(raw["matmul_gflops"].values())
    g2, g4 = raw["gloo_2"], raw["gloo_4"]
    profile = {
        "name": "cpu",
        "note": f"measured by `llama-course bench` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores, "
                f"torch {torch.__version__}); per process, one thread",
        "peak_tflops": {"fp32": peak / 1e3, "bf16": peak / 1e3 / 4, "fp16": peak / 1e3 / 8},
        "matmul_efficiency": min(1.0, raw["model_shape_gflops"]["small"] / peak),
        "memory_bandwidth_GBps": raw["copy_GBps"],
        "kernel_overhead_us": raw["kernel_overhead_us"],
        "intra_node": {"bandwidth_GBps": g2["p2p_GBps"], "latency_us": g2["p2p_latency_us"]},
        "allreduce": {"latency_us_2": g2["allreduce_latency_us"], "busbw_GBps_2": g2["allreduce_busbw_GBps"],
                      "latency_us_4": g4["allreduce_latency_us"], "busbw_GBps_4": g4["allreduce_busbw_GBps"]},
        "launch_s": raw["launch_2_processes_s"],
        "cores": os.cpu_count(),
    }
    return {"raw": raw, "profile": profile}


def cli(args) -> int:
    from simulator.hardware import write_cpu_profile

    result = measure(quick=args.quick, progress=not args.json)
    path = write_cpu_profile(result["profile"], args.out or default_profile_path())
    result["profile_path"] = path
    if args.json:
        print(json.dumps(result))
    else:
        raw, prof = result["raw"], result["profile"]
        print(f"matmul (fp32, 1 thread): {', '.join(f'{n}^3 {g:.0f}' for n, g in raw['matmul_gflops'].items())} GFLOP/s")
        print(f"model shapes fwd+bwd:    tiny {raw['model_shape_gflops']['tiny']:.0f}, "
              f"small {raw['model_shape_gflops']['small']:.0f} GFLOP/s")
        print(f"memory copy:             {raw['copy_GBps']:.1f} GB/s;  kernel overhead {raw['kernel_overhead_us']:.1f} us")
        for w in (2, 4):
            g = raw[f"gloo_{w}"]
            p2p = f"p2p {g['p2p_latency_us']:.0f} us, {g['p2p_GBps']:.2f} GB/s; " if "p2p_GBps" in g else ""
            print(f"gloo {w} processes:       {p2p}all_reduce {g['allreduce_latency_us']:.0f} us, "
                  f"busbw {g['allreduce_busbw_GBps']:.2f} GB/s")
        print(f"launch 2 processes:      {raw['launch_2_processes_s']:.1f} s")
        print(f"profile written to {path} (peak {prof['peak_tflops']['fp32'] * 1e3:.0f} GFLOP/s fp32 per process)")
    return 0
