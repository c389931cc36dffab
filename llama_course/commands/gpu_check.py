"""The GPU check (`bash scripts/gpu_check.sh`): what this package reaches on one GPU, measured.

    python -m llama_course.commands.gpu_check --out runs/gpu_check [--quick]

1. the device: name, memory, a bf16 matmul at 8192^3 (the ceiling we compare against);
2. the `small` preset in bf16 (built-in corpus), then a ~1.1B-parameter LLaMA (`llama-1b`, seq 2048,
   synthetic tokens) in bf16 with SDPA flash attention, eager and with torch.compile: tokens/s and MFU
   (model FLOPs / dense bf16 peak of the device preset); goal for the 1B model: MFU >= 45% on an H200;
3. the simulator's prediction for the same configs beside the measurement (where simulator imports);
4. calibration: HBM copy bandwidth, and the one matmul efficiency that makes the simulator's step time of
   the fastest ~1B run equal the measured one (`calibrate_profile`, a bisection). It is written as
   `<preset>_profile.json` (e.g. h200_profile.json), which the simulator applies to that preset:

       LLAMA_COURSE_GPU_PROFILE=runs/gpu_check/h200_profile.json llama-course simulate CONFIG --set cluster.gpu=h200
       cp runs/gpu_check/h200_profile.json simulator/profiles/h200.json      # ship it as the h200 calibration

Writes gpu_check.json and gpu_check.md under --out. Everything in one process, under 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def copy_gbps(n_bytes: int = 2 << 30, repeats: int = 10) -> float:
    """HBM bandwidth of a device-to-device copy (bytes read + written per second)."""
    import torch

    a = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * n_bytes * repeats / (time.perf_counter() - t) / 1e9


def preset_of(device_name: str) -> str | None:
    """The simulator preset of a CUDA device name."""
    name = device_name.lower()
    for key, preset in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100-80gb")):
        if key in name:
            return preset
    return None


def calibrate_profile(preset: str, runs: list, matmul_tflops: float | None = None,
                      copy_GBps: float | None = None) -> dict | None:
    """A GPU profile for `preset` from measured runs: the matmul efficiency e for which the simulator's
    step time of the fastest ~1B-parameter run equals the measured step (bisection; step time falls as e
    rises), with the measured copy bandwidth. One number per GPU type, from one run, as for the A100."""
    from simulator.config import load_config
    from simulator.simulate import simulate

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
               "note": f"calibrated by scripts/gpu_check.sh on {time.strftime('%Y-%m-%d')} from '{best['name']}' "
                       f"({best['step_time_s'] * 1e3:.1f} ms per step)"}
    if copy_GBps:
        profile["memory_bandwidth_GBps"] = copy_GBps
    if matmul_tflops:
        profile["measured_matmul_tflops"] = matmul_tflops
    return profile


def run(name: str, overrides: list, steps: int) -> dict:
    import torch

    from llama_course.trainer import run_worker
    from simulator.config import load_config

    cfg = load_config(None, overrides + [f"training.steps={steps}", "training.eval_every=0", "training.eval_batches=1",
                                         "parallel.implementation=torch", "training.warmup_steps=2"])
    t0 = time.perf_counter()
    records = run_worker(cfg, quiet=True)
    wall = time.perf_counter() - t0
    tail = records[len(records) // 2:]                    # after warm-up and compilation
    out = {"name": name, "overrides": overrides, "steps": steps, "wall_s": wall,
           "tokens_per_s": statistics.median(r["tokens_per_s"] for r in tail),
           "step_time_s": statistics.median(r["step_time_s"] for r in tail),
           "mfu": statistics.median(r["mfu"] for r in tail) if tail[0]["mfu"] is not None else None,
           "peak_memory_GB": max(r["peak_memory_bytes"] for r in records) / 1e9,
           "final_loss": records[-1]["loss"]}
    try:
        from simulator.simulate import simulate

        preset = preset_of(torch.cuda.get_device_name()) or "h200"
        cfg_h200 = load_config(None, overrides + [f"cluster.gpu={preset}", "cluster.num_gpus=1"])
        pred = simulate(cfg_h200)
        out["predicted_step_time_s"] = pred["step_time_s"]
        out["predicted_mfu"] = pred["mfu"]
    except Exception as e:  # the measurement stands on its own
        out["prediction_error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke test)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device visible", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": props.name,
              "memory_GB": props.total_memory / 1e9, "bf16_matmul_tflops": matmul_tflops(),
              "copy_GBps": copy_gbps()}
    print(json.dumps(report), flush=True)
    s = 10 if args.quick else 40
    runs = [
        ("small bf16", ["model.preset=small", "seq_len=512", "parallel.micro_batch_size=32",
                        "parallel.global_batch_size=32", "training.precision=bf16"], s),
        ("llama-1b bf16 eager", ["model.preset=llama-1b", "seq_len=2048", "data.corpus=synthetic",
                                 "parallel.micro_batch_size=8", "parallel.global_batch_size=16",
                                 "training.precision=bf16"], max(s // 2, 8)),
        ("llama-1b bf16 compiled", ["model.preset=llama-1b", "seq_len=2048", "data.corpus=synthetic",
                                    "parallel.micro_batch_size=8", "parallel.global_batch_size=16",
                                    "training.precision=bf16", "training.compile=true"], max(s // 2, 10)),
    ]
    report["runs"] = []
    for name, overrides, steps in runs:
        try:
            report["runs"].append(run(name, overrides, steps))
        except Exception as e:
            report["runs"].append({"name": name, "error": f"{type(e).__name__}: {e}"})
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    preset = preset_of(props.name)
    if preset:
        try:
            profile = calibrate_profile(preset, report["runs"], report["bf16_matmul_tflops"], report["copy_GBps"])
        except Exception as e:  # the measurements stand without the calibration
            profile = None
            print(f"calibration: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if profile:
            report["profile"] = profile
            path = os.path.join(args.out, f"{preset}_profile.json")
            with open(path, "w") as f:
                json.dump(profile, f, indent=2)
            print(f"calibrated {preset}: matmul efficiency {profile['matmul_efficiency']:.3f} (preset "
                  f"{_preset_efficiency(preset):.3f}), copy {report['copy_GBps']:.0f} GB/s; wrote {path}", flush=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"GPU check of {report['date']} on {report['device']} (torch {report['torch']}): "
             f"bf16 matmul 8192^3 at {report['bf16_matmul_tflops']:.0f} TFLOP/s, HBM copy "
             f"{report['copy_GBps']:.0f} GB/s."
             + (f" Calibrated matmul efficiency {report['profile']['matmul_efficiency']:.3f}."
                if "profile" in report else ""), "",
             "| run | tokens/s | step (ms) | MFU | predicted MFU | peak memory (GB) |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | |")
            continue
        pm = f"{r['predicted_mfu']:.1%}" if "predicted_mfu" in r else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['step_time_s'] * 1e3:.1f} | {mfu} | {pm} | "
                     f"{r['peak_memory_GB']:.1f} |")
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _preset_efficiency(preset: str) -> float:
    from simulator.hardware import GPU_PRESETS

    return GPU_PRESETS[preset]().matmul_efficiency


if __name__ == "__main__":
    sys.exit(main())
