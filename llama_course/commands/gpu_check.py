"""The GPU check (`bash scripts/gpu_check.sh`): does the GPU path run, and what does it reach, measured.

    bash scripts/gpu_check.sh [OUT_DIR]                       # on a GPU machine, at most 8 minutes
    python -m llama_course.commands.gpu_check --dry-run       # its cheap parts on CPU (CI runs this)

Steps, in order; the first that fails stops the check with a non-zero exit (`set -e` semantics), after
writing what it had measured so far:

1. device: name, memory, a bf16 matmul at 8192^3 and an HBM copy (the GPU's own bench);
2. numerics: the tiny model in fp32 for 5 steps on the CPU and on the GPU: the same losses to 1e-4;
3. models: the `small` preset and a ~1.1B-parameter LLaMA (`llama-1b`, seq 2048) in bf16 with SDPA, eager
   and with torch.compile: tokens/s, MFU (goal for the 1B model: 50% on an H100 or H200) and peak memory,
   beside the simulator's prediction for the same config;
4. calibration: the matmul efficiency that makes the simulator's step of the fastest 1B run equal the
   measured one (`simulator.calibration.calibrate_gpu_profile`), written as `<preset>_profile.json`:

       LLAMA_COURSE_GPU_PROFILE=OUT_DIR/h100-sxm_profile.json llama-course simulate CONFIG --set cluster.gpu=h100-sxm

5. engines: every engine path that runs with one rank on CUDA (single fp32/bf16/fp16, course ZeRO-1/2/3,
   FSDP2, activation checkpointing, torch.compile), in strict mode (core/wire.py: a tensor handed to a
   collective on another device raises), each with the step-1 loss of the one-process run;
6. two ranks: with >= 2 GPUs, every engine with 2 ranks on NCCL in strict mode (one torchrun launch runs
   them all), each with the one-process step-1 loss; with one GPU, said and skipped.

Writes gpu_check.json and gpu_check.md (a summary to paste into docs/gpu.md) under --out.
`--fail-at STEP` (or LLAMA_COURSE_GPU_CHECK_FAIL=STEP) makes that step fail: the test that the check
can fail. `--dry-run` runs steps 2, 5 and 6 on the CPU with tiny settings (gloo for the two ranks; three
two-rank layouts, or all of them with `--all-layouts`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from simulator.cli_args import Parser

STEPS = ("device", "numerics", "models", "calibration", "engines", "two_ranks")
"""In this order: the measurements (models, calibration) are recorded before the engine paths can stop the check."""

BASE = ["model.preset=tiny", "seq_len=64", "parallel.global_batch_size=4", "parallel.micro_batch_size=1",
        "training.precision=fp32", "training.warmup_steps=1", "training.eval_every=0", "training.eval_batches=1",
        "parallel.implementation=course"]
"""The small run every correctness step shares: its step-1 loss is the same under every layout."""

ONE_RANK = [("single fp32", []), ("single bf16", ["training.precision=bf16"]),
            ("course ZeRO-1", ["parallel.zero_stage=1"]), ("course ZeRO-2", ["parallel.zero_stage=2"]),
            ("course ZeRO-3", ["parallel.zero_stage=3"]),
            ("FSDP2 (ZeRO-3)", ["parallel.zero_stage=3", "parallel.implementation=torch"]),
            ("activation checkpointing", ["parallel.activation_checkpointing=full"]),
            ("torch.compile", ["training.compile=true"]), ("single fp16 (loss scaling)", ["training.precision=fp16"]),
            ("single fp8 (scaled matmuls)", ["training.precision=bf16", "training.fp8=true"])]
"""Engine paths that run with one rank (name, overrides on BASE)."""

TWO = ["cluster.num_gpus=2"]
MOE = ["model.n_experts=4", "model.experts_per_token=2"]
"""A mixture of experts: its two-rank runs log the one-process step-1 loss of the same model."""
TWO_RANKS = [("dp naive", TWO + ["parallel.bucket_mb=0"]), ("dp bucketed", TWO), ("ZeRO-1", TWO + ["parallel.zero_stage=1"]),
             ("ZeRO-2", TWO + ["parallel.zero_stage=2"]), ("ZeRO-3", TWO + ["parallel.zero_stage=3"]),
             ("dp fp16 compression", TWO + ["parallel.compression=fp16"]),
             ("dp powersgd", TWO + ["parallel.compression=powersgd"]),
             ("DDP", TWO + ["parallel.implementation=torch"]),
             ("FSDP2", TWO + ["parallel.implementation=torch", "parallel.zero_stage=3"]),
             ("tp course", TWO + ["parallel.tp=2"]), ("tp + sp course", TWO + ["parallel.tp=2", "parallel.sequence_parallel=true"]),
             ("tp DTensor", TWO + ["parallel.tp=2", "parallel.implementation=torch"]),
             ("pp GPipe", TWO + ["parallel.pp=2", "parallel.schedule=gpipe"]), ("pp 1F1B", TWO + ["parallel.pp=2"]),
             ("pp interleaved", TWO + ["parallel.pp=2", "parallel.vpp=2", "parallel.schedule=interleaved_1f1b"]),
             ("pp zero bubble", TWO + ["parallel.pp=2", "parallel.schedule=zero_bubble"]),
             ("pp torch 1F1B", TWO + ["parallel.pp=2", "parallel.implementation=torch"]),
             ("cp 2 (K/V all-gather)", TWO + ["parallel.cp=2"]),
             ("MoE dp 2", TWO + MOE), ("MoE ep 2 (all-to-all)", TWO + MOE + ["parallel.ep=2"]),
             ("local SGD", TWO + ["parallel.sync=local_sgd"]),
             ("dynamic batch", TWO + ["load_balance.policy=dynamic_batch"]),
             ("parameter server", ["parallel.strategy=parameter_server", "parallel.dp=1", "parallel.num_servers=1"])]
"""Engine paths with two ranks (name, overrides on BASE); all log the one-process step-1 loss."""


class CheckFailed(RuntimeError):
    """A step of the check found something wrong (or was told to fail)."""


def main(argv=None) -> int:
    ap = Parser(prog="python -m llama_course.commands.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--quick", action="store_true", help="fewer steps in the timed runs (a smoke test)")
    ap.add_argument("--dry-run", action="store_true", help="the cheap steps on the CPU (no GPU needed)")
    ap.add_argument("--all-layouts", action="store_true",
                    help="with --dry-run: every two-rank layout on the CPU, not three")
    ap.add_argument("--fail-at", choices=STEPS, default=os.environ.get("LLAMA_COURSE_GPU_CHECK_FAIL") or None,
                    help="make this step fail (tests that the check can fail)")
    ap.add_argument("--two-rank-worker", nargs=2, metavar=("OUT", "LAYOUTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.two_rank_worker:
        return _two_rank_worker(*args.two_rank_worker)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device visible (--dry-run runs the cheap steps on the CPU)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "dry_run": args.dry_run}
    steps = {"device": device_step, "numerics": numerics_step, "engines": engines_step, "models": models_step,
             "calibration": calibration_step, "two_ranks": two_ranks_step}
    for name in STEPS:
        print(f"== gpu_check: {name}", flush=True)
        start = time.perf_counter()
        try:
            if name == args.fail_at:
                raise CheckFailed(f"failure injected at step {name} (--fail-at / LLAMA_COURSE_GPU_CHECK_FAIL)")
            steps[name](report, args)
        except Exception as e:       # noqa: BLE001  stop at the first failure, say which, keep what was measured
            report["failed"] = {"step": name, "error": f"{type(e).__name__}: {str(e).strip()[:500]}"}
            write_report(report, args.out)
            print(f"gpu_check: step {name} FAILED: {report['failed']['error']}", file=sys.stderr, flush=True)
            return 1
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
    write_report(report, args.out)
    return 0


# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------

def device_step(report: dict, args) -> None:
    import torch

    if args.dry_run:
        report["device"] = "cpu (dry run)"
        return
    props = torch.cuda.get_device_properties(0)
    report.update({"device": props.name, "gpus": torch.cuda.device_count(), "memory_GB": props.total_memory / 1e9,
                   "bf16_matmul_tflops": matmul_tflops(), "copy_GBps": copy_gbps()})
    print(json.dumps({k: report[k] for k in ("device", "gpus", "memory_GB", "bf16_matmul_tflops", "copy_GBps")}),
          flush=True)


def numerics_step(report: dict, args) -> None:
    """The tiny model in fp32, 5 steps, on the CPU and on the GPU: the same losses to 1e-4."""
    steps = 2 if args.dry_run else 5
    cpu = train(BASE, steps, "cpu")
    gpu = train(BASE, steps, "cpu" if args.dry_run else "cuda")
    worst = max(abs(a - b) / abs(a) for a, b in zip(cpu, gpu))
    report["numerics"] = {"cpu_losses": cpu, "gpu_losses": gpu, "max_relative_difference": worst}
    print(f"numerics: max relative loss difference GPU vs CPU over {steps} steps {worst:.2e}", flush=True)
    if not worst <= 1e-4:
        raise CheckFailed(f"GPU losses {gpu} differ from the CPU's {cpu} by {worst:.2e} (> 1e-4)")


def engines_step(report: dict, args) -> None:
    """Every one-rank engine path, strict mode on; step-1 loss against the fp32 run's."""
    reference = report["numerics"]["gpu_losses"][0]
    rows = []
    for name, overrides in ONE_RANK[:3] if args.dry_run else ONE_RANK:
        losses = train(BASE + overrides, 2 if args.dry_run else 3, "cpu" if args.dry_run else "cuda", strict=True)
        tolerance = 1e-4 if "precision" not in " ".join(overrides) else 3e-2
        rows.append({"name": name, "losses": losses, "tolerance": tolerance})
        print(f"engine {name}: losses {[round(x, 4) for x in losses]}", flush=True)
        check_losses(name, losses, reference, tolerance)
    report["engines"] = rows


def models_step(report: dict, args) -> None:
    """The small preset and the ~1B LLaMA in bf16 (SDPA; eager and compiled), beside the simulator."""
    if args.dry_run:
        report["runs"] = []
        return
    import torch

    s = 10 if args.quick else 30
    one_b = ["model.preset=llama-1b", "seq_len=2048", "data.corpus=synthetic", "parallel.micro_batch_size=8",
             "parallel.global_batch_size=16", "training.precision=bf16", "parallel.implementation=torch"]
    runs = [("small bf16", ["model.preset=small", "seq_len=512", "parallel.micro_batch_size=32",
                            "parallel.global_batch_size=32", "training.precision=bf16",
                            "parallel.implementation=torch"], s),
            ("llama-1b bf16 eager", one_b, max(s // 2, 8)),
            ("llama-1b bf16 compiled", one_b + ["training.compile=true"], max(s // 2, 10))]
    report["runs"] = []
    for name, overrides, steps in runs:
        report["runs"].append(timed_run(name, overrides, steps))
        torch.cuda.empty_cache()
    best = max((r for r in report["runs"] if "llama-1b" in r["name"]), key=lambda r: r["mfu"] or 0)
    print(f"llama-1b: best MFU {best['mfu']:.1%} (goal 50%: {'met' if best['mfu'] >= 0.5 else 'not met'})", flush=True)


def calibration_step(report: dict, args) -> None:
    if args.dry_run:
        return
    from simulator.calibration import calibrate_gpu_profile

    preset = preset_of(report["device"])
    if preset is None:
        print(f"calibration: no simulator preset for {report['device']}; skipped", flush=True)
        return
    profile = calibrate_gpu_profile(preset, report["runs"], report["bf16_matmul_tflops"], report["copy_GBps"])
    if profile is None:
        raise CheckFailed("no llama-1b run to calibrate on")
    report["profile"] = profile
    path = os.path.join(args.out, f"{preset}_profile.json")
    with open(path, "w") as f:
        json.dump(profile, f, indent=2)
    print(f"calibrated {preset}: matmul efficiency {profile['matmul_efficiency']:.3f}; wrote {path}", flush=True)


def two_ranks_step(report: dict, args) -> None:
    """Every engine with 2 ranks (NCCL on 2 GPUs; gloo on the CPU in a dry run), one torchrun launch."""
    gpus = report.get("gpus", 0)
    if not args.dry_run and gpus < 2:
        print(f"two ranks: {gpus} GPU here; the 2-rank NCCL runs need 2 (skipped)", flush=True)
        return
    layouts = TWO_RANKS[:2] + TWO_RANKS[-1:] if args.dry_run and not args.all_layouts else TWO_RANKS
    out = os.path.join(args.out, "two_ranks.json")
    env = {**os.environ, "LLAMA_COURSE_STRICT": "1", "OMP_NUM_THREADS": "1", "LOGLEVEL": "ERROR",
           "LLAMA_COURSE_DEVICE": "cpu" if args.dry_run else "cuda"}
    from llama_course.trainer import free_port

    cmd = [sys.executable, "-m", "llama_course.core.launch", "--torchrun", "--nnodes=1",
           "--nproc-per-node=2", "--max-restarts=0", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
           "--local-addr=127.0.0.1", "-m", "llama_course.commands.gpu_check", "--two-rank-worker", out,
           json.dumps(layouts)]
    code = subprocess.call(cmd, env=env, timeout=420)
    if code:
        raise CheckFailed(f"the 2-rank launch exited {code} (its output is above)")
    with open(out) as f:
        rows = json.load(f)
    references = {(): report["numerics"]["gpu_losses"][0]}     # the model's overrides -> its one-process loss
    for row, (_, overrides) in zip(rows, layouts):
        model = tuple(o for o in overrides if o.startswith("model."))
        if model not in references:
            references[model] = train(BASE + list(model), 1, "cpu" if args.dry_run else "cuda", strict=True)[0]
        print(f"2 ranks {row['name']}: losses {[round(x, 4) for x in row['losses']]}", flush=True)
        check_losses(row["name"], row["losses"], references[model], 1e-4)
    report["two_ranks"] = rows


def _two_rank_worker(out: str, layouts: str) -> int:
    """One rank of the 2-rank launch: every layout in turn, each on its own process group."""
    import torch.distributed as dist

    from llama_course.core.distributed import init_distributed
    from llama_course.trainer import free_port, run_worker
    from simulator.config import load_config

    rows, layouts = [], json.loads(layouts)
    init_distributed(2)
    ports = [free_port() for _ in layouts]
    dist.broadcast_object_list(ports, src=0)               # each run builds its own group on its own port
    dist.destroy_process_group()
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    for (name, overrides), port in zip(layouts, ports):
        os.environ["MASTER_PORT"] = str(port)
        records = run_worker(load_config(None, BASE + overrides + ["training.steps=2"]), quiet=True)
        rows.append({"name": name, "losses": [r["loss"] for r in records]})
    if int(os.environ["RANK"]) == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    sys.stdout.flush()
    os._exit(0)                     # skip the interpreter teardown (gloo and RPC threads; see trainer.cli)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def check_losses(name: str, losses: list, reference: float, tolerance: float) -> None:
    if not all(math.isfinite(x) for x in losses):
        raise CheckFailed(f"{name}: non-finite loss {losses}")
    if abs(losses[0] - reference) > tolerance * abs(reference):
        raise CheckFailed(f"{name}: step-1 loss {losses[0]:.6f}, the one-process run's {reference:.6f} "
                          f"(relative tolerance {tolerance:g})")


def train(overrides: list, steps: int, device: str, strict: bool = False) -> list:
    """Losses of a one-process run on `device` (in this process)."""
    from llama_course.trainer import run_worker
    from simulator.config import load_config

    saved = {k: os.environ.get(k) for k in ("LLAMA_COURSE_DEVICE", "LLAMA_COURSE_STRICT")}
    os.environ.update({"LLAMA_COURSE_DEVICE": device, "LLAMA_COURSE_STRICT": "1" if strict else "0"})
    try:
        return [r["loss"] for r in run_worker(load_config(None, overrides + [f"training.steps={steps}"]), quiet=True)]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def timed_run(name: str, overrides: list, steps: int) -> dict:
    import torch

    from llama_course.trainer import run_worker
    from simulator.config import load_config
    from simulator.simulate import simulate

    cfg = load_config(None, overrides + [f"training.steps={steps}", "training.eval_every=0", "training.eval_batches=1",
                                         "training.warmup_steps=2"])
    t0 = time.perf_counter()
    records = run_worker(cfg, quiet=True)
    tail = records[len(records) // 2:]                    # after warm-up and compilation
    out = {"name": name, "overrides": overrides, "steps": steps, "wall_s": time.perf_counter() - t0,
           "tokens_per_s": statistics.median(r["tokens_per_s"] for r in tail),
           "step_time_s": statistics.median(r["step_time_s"] for r in tail),
           "mfu": statistics.median(r["mfu"] for r in tail) if tail[0]["mfu"] is not None else None,
           "peak_memory_GB": max(r["peak_memory_bytes"] for r in records) / 1e9, "final_loss": records[-1]["loss"]}
    preset = preset_of(torch.cuda.get_device_name()) or "h100-sxm"
    pred = simulate(load_config(None, overrides + [f"cluster.gpu={preset}", "cluster.num_gpus=1"]))
    out.update({"predicted_preset": preset, "predicted_step_time_s": pred["step_time_s"], "predicted_mfu": pred["mfu"],
                "predicted_memory_GB": pred["memory_per_gpu_bytes"]["total"] / 1e9})
    print(json.dumps(out), flush=True)
    return out


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


def write_report(report: dict, out: str) -> None:
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = summary_lines(report)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def summary_lines(report: dict) -> list:
    """The markdown summary (to paste into docs/gpu.md under the recorded figures)."""
    head = f"GPU check of {report['date']} on {report.get('device', '?')} (torch {report['torch']})"
    if "bf16_matmul_tflops" in report:
        head += f": bf16 matmul 8192^3 {report['bf16_matmul_tflops']:.0f} TFLOP/s, HBM copy {report['copy_GBps']:.0f} GB/s"
    lines = [head + ".", ""]
    if "failed" in report:
        lines += [f"**FAILED at step {report['failed']['step']}**: {report['failed']['error']}", ""]
    if "numerics" in report:
        lines += [f"- numerics: tiny fp32, GPU vs CPU, max relative loss difference "
                  f"{report['numerics']['max_relative_difference']:.1e} over {len(report['numerics']['cpu_losses'])} steps"]
    for key, title in (("engines", "1 rank"), ("two_ranks", "2 ranks")):
        if report.get(key):
            lines.append(f"- engines on {title}, step-1 loss equal to one process: "
                         + ", ".join(r["name"] for r in report[key]))
    if report.get("runs"):
        lines += ["", "| run | tokens/s | step (ms) | MFU | predicted MFU | peak memory (GB) | predicted (GB) |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["runs"]:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            lines.append(f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['step_time_s'] * 1e3:.1f} | {mfu} | "
                         f"{r['predicted_mfu']:.1%} | {r['peak_memory_GB']:.1f} | {r['predicted_memory_GB']:.1f} |")
    if "profile" in report:
        lines += ["", f"Calibrated {report['profile']['name']}: matmul efficiency "
                      f"{report['profile']['matmul_efficiency']:.3f} ({report['profile']['note']})."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
