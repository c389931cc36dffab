"""Time lost per failure: restart-everything (torchrun --max-restarts + checkpoint) against per-step fault
tolerance, the course's (fault_tolerance.py) and torchft's (fault_tolerance_torchft.py), on the same run.

    python benchmarks/fault_tolerance.py                       # markdown table (about 4 minutes on 2 cores)
    python benchmarks/fault_tolerance.py --steps 60 --kill-step 15 --every 10 --slow 3 --repeats 3 --json
    python benchmarks/fault_tolerance.py --ways per_step,torchft   # only the per-step ways

The run: the tiny LLaMA, 2 data-parallel replicas on gloo, global batch 8 x 64 tokens, every rank's compute
stretched --slow times (faults.slow) so a replacement has time to start and join. Each way runs twice
with the same config, once clean and once with replica (rank) 1 SIGKILLed at --kill-step; the time lost is
the difference of the two wall times (median over --repeats pairs, measured back to back so both see the
same machine load). Restart-everything checkpoints every --every steps, so it also redoes the steps since
the last checkpoint. Per-step fault tolerance restarts nobody: the survivor finishes the step alone and a
replacement joins live; it loses instead the dead replica's share of the batch for the steps it missed
(reported as lost sample-steps). torchft (0.2.0: Rust lighthouse, Manager, reconfigurable gloo group,
HTTP state transfer to the replacement) runs the same loop with the same heartbeat timeout (1 s).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from simulator.cli_args import Parser  # noqa: E402

BASE = ["parallel.global_batch_size=8", "parallel.micro_batch_size=2", "seq_len=64", "training.eval_every=0",
        "training.eval_batches=1", "parallel.implementation=torch"]


def restart_everything(steps: int, every: int, kill_step: int | None, slow: float) -> dict:
    over = BASE + [f"training.steps={steps}", f"checkpoint.every_steps={every}", f"faults.slow={{0: {slow}, 1: {slow}}}"]
    if kill_step:
        over.append(f"faults.kill=[{{rank: 1, step: {kill_step}}}]")
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "llama_course", "train", "configs/tiny.yaml", "--metrics", f"{tmp}/m.jsonl",
                "--checkpoint-dir", f"{tmp}/ck", "--max-restarts", "1", "--quiet"]
        for item in over:
            args += ["--set", item]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        with open(f"{tmp}/m.jsonl") as f:
            records = [json.loads(line) for line in f]
    return {"wall_s": wall, "step_s": statistics.median(r["step_time_s"] for r in records)}


def per_step(steps: int, kill_step: int | None, slow: float, way: str = "per_step") -> dict:
    """One run of per-step fault tolerance: the course's (way "per_step") or torchft's ("torchft")."""
    from llama_course.coordination.fault_tolerance import read_metrics, supervise
    from simulator.config import load_config

    if way == "torchft":
        from llama_course.coordination.fault_tolerance_torchft import supervise

    over = [o for o in BASE if "implementation" not in o] + [f"training.steps={steps}",
                                                            f"faults.slow={{0: {slow}, 1: {slow}}}"]
    if kill_step:
        over.append(f"faults.kill=[{{rank: 1, step: {kill_step}}}]")
    cfg = load_config(os.path.join(ROOT, "configs/tiny.yaml"), over)
    with tempfile.TemporaryDirectory() as tmp:
        summary = supervise(cfg, tmp, replace=True, heartbeat_timeout_s=1.0)
        r0 = read_metrics(tmp, 0)
    median = statistics.median(r["step_time_s"] for r in r0)
    by_step = {r["step"]: r for r in r0}
    out = {"wall_s": summary["wall_s"], "step_s": median,
           "stall_s": sum(max(0.0, r["step_time_s"] - median) for r in r0),
           "lost_sample_steps": sum(2 - r["participants"] for r in r0) * cfg.parallel.global_batch_size // 2}
    if kill_step:
        joined = next((r for r in r0 if r["step"] > kill_step and r["participants"] == 2), None)
        out["failure_step_stall_s"] = by_step[kill_step]["step_time_s"] - median
        out["join_step_stall_s"] = joined["step_time_s"] - median if joined else None
        out["joined_at_step"] = joined["step"] if joined else None
    return out


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--kill-step", type=int, default=15)
    ap.add_argument("--every", type=int, default=10, help="restart-everything: checkpoint every N steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow", type=float, default=3.0, help="faults.slow factor on both ranks")
    ap.add_argument("--ways", default="restart,per_step,torchft",
                    help="comma-separated subset of restart, per_step (the course's), torchft")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ways = [w for w in ("restart", "per_step", "torchft") if w in args.ways.split(",")]
    per_step_ways = [w for w in ways if w != "restart"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = {w: [] for w in ways}
    for _ in range(args.repeats):
        if "restart" in ways:
            clean = restart_everything(args.steps, args.every, None, args.slow)
            killed = restart_everything(args.steps, args.every, args.kill_step, args.slow)
            rows["restart"].append({"clean": clean, "killed": killed, "lost_s": killed["wall_s"] - clean["wall_s"]})
        for way in per_step_ways:
            clean = per_step(args.steps, None, args.slow, way)
            killed = per_step(args.steps, args.kill_step, args.slow, way)
            rows[way].append({"clean": clean, "killed": killed, "lost_s": killed["wall_s"] - clean["wall_s"],
                              "extra_stall_s": killed["stall_s"] - clean["stall_s"]})
    summary = {"date": datetime.date.today().isoformat(), "args": vars(args), "runs": rows}
    if "restart" in ways:
        summary.update(restart_lost_s=statistics.median(r["lost_s"] for r in rows["restart"]),
                       restart_step_s=statistics.median(r["clean"]["step_s"] for r in rows["restart"]),
                       redone_steps=(args.kill_step - 1) % args.every)
    for way in per_step_ways:
        r = rows[way]
        summary[way] = {
            "lost_s": statistics.median(x["lost_s"] for x in r),
            "extra_stall_s": statistics.median(x["extra_stall_s"] for x in r),
            "joined_at_step": [x["killed"]["joined_at_step"] for x in r],
            "step_s": statistics.median(x["clean"]["step_s"] for x in r),
            "failure_step_stall_s": statistics.median(x["killed"]["failure_step_stall_s"] for x in r),
            "join_step_stall_s": statistics.median(x["killed"]["join_step_stall_s"] or 0 for x in r),
            "lost_sample_steps": statistics.median(x["killed"]["lost_sample_steps"] for x in r),
        }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    s = summary
    print(f"tiny LLaMA, dp = 2 on gloo, {args.steps} steps, rank 1 killed at step {args.kill_step}, "
          f"median of {args.repeats} ({s['date']})\n")
    print("| way | clean step (s) | time lost per failure (s) | redone steps | lost samples |")
    print("|---|---:|---:|---:|---:|")
    if "restart" in ways:
        print(f"| restart everything (torchrun --max-restarts 1, checkpoint every {args.every}) | "
              f"{s['restart_step_s']:.3f} | {s['restart_lost_s']:.1f} | {s['redone_steps']} | 0 |")
    names = {"per_step": "per-step fault tolerance, the course's (quorum, live recovery)",
             "torchft": "per-step fault tolerance, torchft 0.2.0 (Manager, lighthouse, HTTP recovery)"}
    for way in per_step_ways:
        w = s[way]
        print(f"| {names[way]} | {w['step_s']:.3f} | {w['lost_s']:.1f} | 0 | {w['lost_sample_steps']:.0f} sequences |")
    for way in per_step_ways:
        w = s[way]
        print(f"\n{way}: survivor's step times above their median add up to {w['extra_stall_s']:.2f} s more "
              f"than in the clean run; the replacement joined at step {w['joined_at_step']}; the failed step "
              f"stalled {w['failure_step_stall_s']:.2f} s (heartbeat timeout 1 s + new group), the join step "
              f"{w['join_step_stall_s']:.2f} s (new group + state transfer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
