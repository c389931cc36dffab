"""Load balancing, measured and predicted: 4 workers, one 3x slower (faults.slow {3: 3}).

    python benchmarks/load_balancing.py [--steps 30] [--repeat 3] [--out docs/benchmarks/load_balancing.md]

1. No fitting here: the simulator predicts with this machine's cpu profile (measured once by
   `llama-course bench`); the tiny model's single-process micro-batch is timed and shown beside the
   simulator's time for it. Nothing of the 4-rank runs is used to fit the simulator.
2. Measure: `llama-course train` with 4 gloo ranks (data parallel), no straggler, and with rank 3 at 3x
   under load_balance.policy none, dynamic_batch, backup_workers (b = 1). Throughput = tokens of the global
   batch / median step time of the steps after warm-up (the first `skip`).
3. Predict the same four with `simulator.load_balancing.predict` (ranks sharing this machine's cores).

Goals (issue 6): dynamic_batch >= 80% of the no-straggler throughput; predictions within 15%.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from simulator.cli_args import Parser  # noqa: E402

BASE = {"model": {"preset": "tiny"}, "seq_len": 128, "cluster": {"gpu": "cpu", "num_gpus": 4},
        "parallel": {"micro_batch_size": 2, "global_batch_size": 16, "implementation": "torch"},
        "training": {"precision": "fp32", "optimizer": "adamw", "lr": 3e-3, "warmup_steps": 5, "eval_every": 0,
                     "eval_batches": 1},
        "data": {"corpus": "builtin"}}
RUNS = [("no straggler", "none", {}), ("straggler", "none", {3: 3}),
        ("straggler", "dynamic_batch", {3: 3}), ("straggler", "backup_workers", {3: 3})]


def calibrate(cfg, repeats: int = 20) -> float:
    """(measured, simulated) seconds of one micro-batch's forward + backward in this process."""
    import torch

    from llama_course.core.model import build_model
    from simulator.load_balancing import _context

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.parallel.micro_batch_size, cfg.seq_len))
    times = []
    for _ in range(repeats + 3):
        t0 = time.perf_counter()
        model(x).float().logsumexp(-1).mean().backward()
        times.append(time.perf_counter() - t0)
    measured = statistics.median(times[3:])
    # No per-run fitting: the simulator predicts with the machine's cpu profile (`llama-course bench`,
    # calibrated once per machine). The measured single-process micro-batch is reported beside it.
    ctx = _context(cfg)
    sim = sum(f.compute + b.compute for f, b in zip(ctx.step.forward, ctx.step.backward)) / ctx.hw.compute_slowdown
    return measured, sim


def main() -> None:
    ap = Parser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the median step time is used")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "load_balancing.md"))
    args = ap.parse_args()
    from llama_course.trainer import train
    from simulator.config import load_config
    from simulator.load_balancing import cores_of, predict

    base_cfg = load_config(BASE, [f"training.steps={args.steps}"])
    micro_s, sim_s = calibrate(base_cfg)
    tokens = base_cfg.tokens_per_step
    rows = []
    for label, policy, slow in RUNS:
        overrides = [f"training.steps={args.steps}", f"load_balance.policy={policy}", "faults.slow={" + ", ".join(f"{k}: {v}" for k, v in slow.items()) + "}"]
        steps = []
        for _ in range(max(1, args.repeat)):
            recs = train(BASE, overrides)
            steps.append(statistics.median(r["step_time_s"] for r in recs[args.skip:]))
        step = statistics.median(steps)
        cfg = load_config(BASE, overrides)
        pred = predict(cfg, policy)
        rows.append({"run": label, "policy": policy, "measured_tokens_per_s": tokens / step,
                     "predicted_tokens_per_s": tokens / pred["step_time_s"], "measured_step_s": step,
                     "predicted_step_s": pred["step_time_s"], "shares": pred["shares"],
                     "sequences_used": pred["sequences_used"], "final_loss": recs[-1]["loss"]})
        print(json.dumps(rows[-1]), flush=True)
    ref = rows[0]["measured_tokens_per_s"]
    for r in rows:
        r["recovered"] = r["measured_tokens_per_s"] / ref
        r["error"] = r["predicted_tokens_per_s"] / r["measured_tokens_per_s"] - 1
    from simulator.hardware import hardware_for

    write(args, rows, micro_s, sim_s, cores_of(hardware_for(base_cfg)))


def write(args, rows, micro_s, sim_s, cores) -> None:
    date = datetime.date.today().isoformat()
    lines = [
        "# Load balancing: measured and predicted",
        "",
        f"Measured on {date} with `python benchmarks/load_balancing.py --steps {args.steps}"
        f"{f' --repeat {args.repeat}' if args.repeat > 1 else ''}` on this machine "
        f"({cores:g} cores shared by the 4 gloo ranks; tiny LLaMA, seq_len 128, global batch 16, micro-batch 2, "
        f"fp32, rank 3 made 3x slower by `faults.slow: {{3: 3}}`). Throughput = tokens per step / median step "
        f"time after {args.skip} warm-up steps{f', median of {args.repeat} runs' if args.repeat > 1 else ''}. The simulator uses the machine's cpu profile as shipped "
        f"(`llama-course bench`, calibrated once per machine, with the cores' worth of compute 4 processes get "
        f"together); one micro-batch alone takes {micro_s * 1e3:.1f} ms measured and {sim_s * 1e3:.1f} ms "
        f"simulated; nothing of the 4-rank runs was fitted.",
        "",
        "| run | policy | measured tokens/s | of no-straggler | predicted tokens/s | prediction error | sequences per update |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['policy']} | {r['measured_tokens_per_s']:,.0f} | {r['recovered']:.0%} | "
                     f"{r['predicted_tokens_per_s']:,.0f} | {r['error']:+.0%} | {r['sequences_used']} |")
    dyn = next(r for r in rows if r["policy"] == "dynamic_batch")
    worst = max(abs(r["error"]) for r in rows[1:])
    lines += ["", f"Goal 1, dynamic_batch recovers >= 80% of the no-straggler throughput: "
                  f"{dyn['recovered']:.0%} ({'met' if dyn['recovered'] >= 0.8 else 'MISSED'}).",
              f"Goal 2, the simulator within 15% for none / dynamic_batch / backup_workers: worst "
              f"{worst:.0%} ({'met' if worst <= 0.15 else 'MISSED'}).",
              "",
              "backup_workers drops the slowest gradient, so each update holds 12 of the 16 sequences: its "
              "tokens/s counts computed tokens, of which 3/4 reach the update.",
              "Runs share the machine with whatever else runs on it; repeat the command to see the spread.",
              "",
              "Where the straggler prediction goes wrong: the simulator plays the 4 ranks on the cores event by "
              "event, each of k computing ranks at 1 / sharing_slowdown(k) of its speed, with the slow rank "
              "sleeping twice its compute's wall time after each micro-batch, as the runtime does. On average "
              "over a free-running run that is right (the no-straggler row), but the kernel's scheduler is not "
              "fair at the 10 ms scale of one micro-batch: in a traced straggler run "
              "(`llama-course train configs/tiny.yaml --set cluster.num_gpus=4 "
              "--set parallel.micro_batch_size=2 --set parallel.implementation=torch --set 'faults.slow={3: 3}' "
              "--set training.steps=20 --trace t.json --trace-steps 20`, 2026-11-29) the slow rank's first micro-batch, computed "
              "while the 3 others run, took 42 ms of wall time against 11 ms alone (3.7x, where the measured "
              "sharing of 4 processes gives 2.4x), and its sleep doubles whatever it lost. The simulator models "
              "that unfairness on average only: `bench` measures how far the slowest of k processes started "
              "together falls behind their mean (`straggle` in the profile, about 20% for 4 processes on 2 "
              "cores), and a step that waits for k ranks is stretched by it (k = 3 under backup_workers, which "
              "drops the slowest); the amplification by the slow rank's sleep is not modeled, so the straggler "
              "rows are predicted too fast."]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
