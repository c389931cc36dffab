"""The GPU check (`bash scripts/gpu_check.sh`): what this package reaches on one GPU, measured.

    python -m llama_course.gpu_check --out runs/gpu_check [--quick]

1. the device: name, memory, a bf16 matmul at 8192^3 (the ceiling we compare against);
2. the `small` preset in bf16 (built-in corpus), then a ~1.1B-parameter LLaMA (`llama-1b`, seq 2048,
   synthetic tokens) in bf16 with SDPA flash attention, eager and with torch.compile: tokens/s and MFU
   (model FLOPs / dense bf16 peak of the device preset); goal for the 1B model: MFU >= 45% on an H200;
3. the simulator's prediction for the same configs beside the measurement (where simulator imports).

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


def run(name: str, overrides: list, steps: int) -> dict:
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

        cfg_h200 = load_config(None, overrides + ["cluster.gpu=h200", "cluster.num_gpus=1"])
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
              "memory_GB": props.total_memory / 1e9, "bf16_matmul_tflops": matmul_tflops()}
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
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"GPU check of {report['date']} on {report['device']} (torch {report['torch']}): "
             f"bf16 matmul 8192^3 at {report['bf16_matmul_tflops']:.0f} TFLOP/s.", "",
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


if __name__ == "__main__":
    sys.exit(main())
