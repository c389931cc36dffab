"""The planner against published LLaMA training runs: docs/simulator/planner.md.

    python benchmarks/plan_validation.py            # writes docs/simulator/planner.md (a few minutes)
    python benchmarks/plan_validation.py --no-write

For each published run the planner keeps the model, cluster, sequence length and global batch, searches
every layout the course's runtime runs (the capability table, simulator/capabilities.py), and its best is
set beside the published throughput; where the paper gives (or we read) the layout it used, the
simulator's prediction for that layout is shown too. Nothing is fitted here: the A100 matmul efficiency
is the one fitted once on Megatron-LM 2021 Table 1 (docs/simulator/validation.md), H100 shares it.

Published figures:
- LLaMA (Touvron et al. 2023): 2048 A100-80GB, batch 4M tokens (2048 x 2048); the 65B model "processes
  around 380 tokens/sec/GPU"; the others from Table 15's GPU-hours (7B 82,432 h and 13B 135,168 h for 1.0T
  tokens, 33B 530,432 h for 1.4T), which include any downtime, so they are a floor on the step throughput.
- Llama 3 (Dubey et al. 2024, Table 4): 405B on 16,384 H100, seq 8192, 16M tokens per batch, TP 8 x PP 16 x
  DP 128, 400 TFLOP/s per GPU (41% BF16 MFU); 430 TFLOP/s (43%) on 8,192 GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from simulator.cli_args import Parser  # noqa: E402

# real systems' data parallelism (DDP / FSDP2 rules: prefetched gathers), not the course's own engines
LLAMA1 = {"cluster": {"gpu": "a100-80gb", "num_gpus": 2048}, "seq_len": 2048,
          "parallel": {"global_batch_size": 2048, "micro_batch_size": 1, "implementation": "torch"},
          "training": {"precision": "bf16"}}
LLAMA3 = {"cluster": {"gpu": "h100-sxm", "num_gpus": 16384}, "seq_len": 8192,
          "parallel": {"global_batch_size": 2048, "micro_batch_size": 1, "tp": 8, "pp": 16, "implementation": "torch"},
          "training": {"precision": "bf16"}}


def _run(preset, base, tokens, gpu_hours=None, tokens_per_s=None, tflops=None, layout_config=None, note="",
         model=None, label=None, layout_overrides=()):
    return dict(preset=preset, base=base, tokens=tokens, gpu_hours=gpu_hours, tokens_per_s=tokens_per_s,
                tflops=tflops, layout_config=layout_config, note=note, model=model or {}, label=label or preset,
                layout_overrides=list(layout_overrides))


RUNS = [
    _run("llama-7b", LLAMA1, 1.0e12, gpu_hours=82432),
    _run("llama-13b", LLAMA1, 1.0e12, gpu_hours=135168),
    _run("llama-33b", LLAMA1, 1.4e12, gpu_hours=530432),
    _run("llama-65b", LLAMA1, 1.4e12, tokens_per_s=380, layout_config="configs/llama-65b-a100.yaml",
         note="paper's layout: our reading of 'model and sequence parallelism' (TP 8, PP 4, SP, selective)"),
    _run("llama3-405b", LLAMA3, 1.56e13, tflops=400, layout_config="configs/llama3-405b-h100.yaml",
         layout_overrides=["parallel.schedule=interleaved_1f1b", "parallel.vpp=8", "parallel.first_stage_layers=7",
                           "parallel.last_stage_layers=7"],
         note="paper's layout: TP 8 x PP 16 x DP 128, interleaved with 8 chunks per rank and one layer fewer on the "
              "first and last stage (7, 14 x 8, 7), under the config's rules (the course's ZeRO-1, full "
              "recomputation: what fits in 80 GB under them)"),
]


def published_tokens_per_s(run, cfg) -> float:
    from simulator.workload import model_flops_per_token

    if run["tokens_per_s"]:
        return run["tokens_per_s"]
    if run["gpu_hours"]:
        return run["tokens"] / (run["gpu_hours"] * 3600)
    return run["tflops"] * 1e12 / model_flops_per_token(cfg.model, cfg.seq_len)


def evaluate(run) -> dict:
    from simulator.config import load_config
    from simulator.hardware import hardware_for
    from simulator.plan import plan
    from simulator.simulate import simulate
    from simulator.workload import model_flops_per_token

    raw = {**run["base"], "model": {"preset": run["preset"], **run["model"]}}
    # published runs: their own layouts may be ones the course runtime does not run yet (runtime=False); the
    # planner still searches only the layouts the capability table allows
    cfg = load_config(raw, [f"training.total_tokens={run['tokens']}"], runtime=False)
    peak = hardware_for(cfg).peak("bf16")
    per_token = model_flops_per_token(cfg.model, cfg.seq_len)
    pub = published_tokens_per_s(run, cfg)
    out = {"run": run, "published_tokens_per_s": pub, "published_mfu": pub * per_token / peak,
           "implementation": cfg.parallel.implementation}
    if run["layout_config"]:
        r = simulate(load_config(os.path.join(ROOT, run["layout_config"]), run["layout_overrides"], runtime=False))
        out["paper_layout"] = {"config": r["config"], "tokens_per_s_per_gpu": r["tokens_per_s_per_gpu"],
                               "mfu": r["mfu"]}
    stats: dict = {}
    best = plan(cfg, top=1, stats=stats)[0]
    out["plan"] = {"parallel": best["parallel"], "tokens_per_s_per_gpu": best["tokens_per_s_per_gpu"],
                   "mfu": best["mfu"], "breakdown_s": best["breakdown_s"], "step_time_s": best["step_time_s"],
                   "memory_GB": best["memory_per_gpu_bytes"]["total"] / 1e9}
    out["stats"] = {k: v for k, v in stats.items() if k != "explanation"}
    out["explanation"] = stats["explanation"]
    return out


def _layout(p: dict) -> str:
    sched = f", {p['schedule']}" + (f" v{p['vpp']}" if p["vpp"] > 1 else "") if p["pp"] > 1 else ""
    if p.get("first_stage_layers") is not None:
        sched += f" (first/last stage {p['first_stage_layers']}/{p['last_stage_layers']} layers)"
    return (f"dp {p['dp']} x tp {p['tp']} x pp {p['pp']}{sched}, ZeRO-{p['zero_stage']}, mb "
            f"{p.get('micro_batch_size', p.get('micro_batches'))}, recompute {p['activation_checkpointing']}")


def findings(results: list) -> str:
    """The reading of the table, with its numbers."""
    def err(r, key="plan"):
        tok = r[key]["tokens_per_s_per_gpu"]
        return tok / r["published_tokens_per_s"] - 1

    by = {r["run"]["label"]: r for r in results}
    llama1 = [r for r in results if r["run"]["preset"].startswith("llama-")]
    paper = by.get("llama-65b")
    meta = by.get("llama3-405b")
    out = []
    if paper and "paper_layout" in paper:
        out.append(f"- **The simulator on the layout a paper used** lands near it: LLaMA-65B with TP 8 x PP 4 "
                   f"(our reading of the paper) is predicted at {paper['paper_layout']['tokens_per_s_per_gpu']:,.0f} "
                   f"tokens/s/GPU against the published 380 ({err(paper, 'paper_layout'):+.0%}).")
    if llama1:
        lo, hi = min(err(r) for r in llama1), max(err(r) for r in llama1)
        stages = sorted({r["plan"]["parallel"]["zero_stage"] for r in llama1})
        impls = sorted({r["implementation"] for r in llama1})
        text = (f"- **The planner's best for LLaMA 7B-65B** lands {lo:+.0%} to {hi:+.0%} from the published "
                f"runs, with ZeRO stage {' or '.join(str(z) for z in stages)} and `parallel.implementation: "
                f"{', '.join(impls)}` (the configs'). ")
        if 3 in stages:
            text += ("Its ZeRO-3 winners are optimistic: the simulator hides prefetched weight gathers behind "
                     "the compute and slows that compute by an assumed share (contention.COMM_SM_SHARE), not a "
                     "measured one.")
        elif impls == ["torch"]:
            text += ("Under FSDP2's rules ZeRO-3 gathers every block's weights again before its backward, in "
                     "every micro-batch; prefetching hides most of it behind the compute, but the first gather of "
                     "each pass is exposed, and accumulating micro-batches holds whole gradients, so ZeRO-3 buys "
                     "memory these layouts do not need. The winners' hidden gathers and reduce-scatters make their "
                     "MFU optimistic: overlapped NCCL kernels slow the GEMMs they run beside (they take SMs and HBM "
                     "bandwidth), which the cost model charges with an assumed share (contention.COMM_SM_SHARE), "
                     "not a measured one.")
        else:
            text += ("The course's ZeRO-3 engine gathers each block's weights just in time (no prefetch), so the "
                     "simulator charges those gathers in full and ZeRO-3 does not win; with "
                     "`--set parallel.implementation=torch` (FSDP2 prefetches the next block's gather) it can, "
                     "and then its MFU is optimistic: the cost model hides prefetched gathers behind the compute and "
                     "slows that compute by an assumed share (contention.COMM_SM_SHARE), not a measured one.")
        out.append(text)
    if meta:
        p = meta["plan"]["parallel"]
        inter = f" interleaved v{p['vpp']}" if p["vpp"] > 1 else ""
        split = (f", first/last stage {p['first_stage_layers']}/{p['last_stage_layers']} layers"
                 if p.get("first_stage_layers") is not None else "")
        out.append(f"- **Llama 3 405B** is below the paper: the planner's best (dp {p['dp']} x tp {p['tp']} x pp "
                   f"{p['pp']}{inter}{split}) "
                   f"reaches {meta['plan']['mfu']:.1%} MFU ({err(meta):+.0%} against the published throughput), "
                   f"Meta's own layout {meta['paper_layout']['mfu']:.1%} ({err(meta, 'paper_layout'):+.0%}) under "
                   "the config's rules. The planner now searches one layer fewer on the first and last stage, as "
                   "Meta split its 126 layers, so interleaving is open to it; with FSDP's sharded gradients and no "
                   "recomputation (docs/simulator/validation.md, the llama3-2024 rows) the same layout comes closer.")
    return "\n".join(out)


README_PLAN = ["plan", "configs/llama-7b-a100.yaml", "--top", "5"]
README_GOAL_S = 10.0


def time_readme_plan() -> dict:
    """Wall seconds of the README's plan example as a user runs it (a fresh process: start-up included), with
    the machine's 1-minute load average just before."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llama_course", *README_PLAN], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"plan_validation: the README example failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {"seconds": seconds, "load": load}


def render(results: list, seconds: float, readme: dict | None = None) -> str:
    lines = ["| run | published tokens/s/GPU (MFU) | simulated, paper's layout | error | planner's best layout | "
             "planner tokens/s/GPU (MFU) | vs published | search |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in results:
        run, pl = r["run"], r["plan"]
        pub = f"{r['published_tokens_per_s']:,.0f} ({r['published_mfu']:.1%})"
        if "paper_layout" in r:
            pa = r["paper_layout"]
            paper = f"{pa['tokens_per_s_per_gpu']:,.0f} ({pa['mfu']:.1%})"
            perr = f"{pa['tokens_per_s_per_gpu'] / r['published_tokens_per_s'] - 1:+.0%}"
        else:
            paper, perr = "-", "-"
        s = r["stats"]
        lines.append(f"| {run['label']} on {run['base']['cluster']['num_gpus']:,} {run['base']['cluster']['gpu']} | "
                     f"{pub} | {paper} | {perr} | {_layout(pl['parallel'])} | "
                     f"{pl['tokens_per_s_per_gpu']:,.0f} ({pl['mfu']:.1%}) | "
                     f"**{pl['tokens_per_s_per_gpu'] / r['published_tokens_per_s'] - 1:+.0%}** | "
                     f"{s['candidates']} layouts, {s['simulated']} simulated, {s['seconds']:.0f} s |")
    notes = "\n".join(f"- {r['run']['label']}: {r['run']['note']}" for r in results if r["run"]["note"])
    readme_text = "" if readme is None else f"""
## The README example

`llama-course {' '.join(README_PLAN)}` took **{readme['seconds']:.1f} s** of wall time in a fresh process
(start-up included; load average {readme['load']:.1f} just before). Goal (issue 17): under {README_GOAL_S:.0f} s:
**{'met' if readme['seconds'] < README_GOAL_S else 'not met'}**.
"""
    why = "\n\n".join(f"**{r['run']['label']}**\n\n```\n{r['explanation']}\n```" for r in results)
    return f"""# The planner against published runs

Generated by `python benchmarks/plan_validation.py` on {time.strftime('%Y-%m-%d')} ({seconds:.0f} s in all,
on a shared 2-core machine: the search times are wall seconds under load). For each run the planner keeps
the model, cluster, sequence length and global batch (`llama-course plan`), searches every dp / tp / pp /
vpp / schedule / ZeRO / micro-batch / recomputation layout that fits and that the course's runtime runs
(the [capability table](../design.md#the-capability-table)), with an even split of the layers over the
stages or one layer fewer on the first and last stage, and reports its fastest. MFU counts model FLOPs (6N + 12 l s d per token, no recomputation) over the dense bf16 peak
(312 TFLOP/s A100, 989 H100). Calibration: the single A100 matmul efficiency fitted on Megatron-LM 2021 Table 1
([validation](validation.md)); nothing is fitted to these runs.

{chr(10).join(lines)}

Published: LLaMA (Touvron et al. 2023): 65B "around 380 tokens/sec/GPU"; 7B, 13B, 33B from Table 15's
GPU-hours (1.0T, 1.0T, 1.4T tokens), which include downtime, so they are floors. Llama 3 (Dubey et al.
2024, Table 4): 400 TFLOP/s per GPU on 16,384 H100 (41% MFU).

{notes}
{readme_text}
## What the comparison says

{findings(results)}

## Why each winner wins (the planner's own explanation)

{why}
"""


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "simulator", "planner.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = []
    for run in RUNS:
        r = evaluate(run)
        results.append(r)
        print(f"{run['label']}: published {r['published_tokens_per_s']:,.0f} tok/s/GPU ({r['published_mfu']:.1%}), "
              f"plan {r['plan']['tokens_per_s_per_gpu']:,.0f} ({r['plan']['mfu']:.1%}) "
              f"[{r['stats']['seconds']:.0f} s]", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    readme = time_readme_plan()
    print(f"README example: {readme['seconds']:.1f} s", file=sys.stderr, flush=True)
    text = render(results, seconds, readme)
    if args.no_write:
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
