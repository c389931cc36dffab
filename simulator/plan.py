"""Plan: search dp x tp x pp, ZeRO stage, micro-batch and recomputation for a model on a cluster.

Keeps the model, cluster, sequence length and global batch of the config, and tries every layout that the
schema accepts: tp a power of two up to a node (TP wants NVLink), pp dividing the layers (interleaved
with v = 2 when it divides too), ZeRO 0-3, micro-batch 1-8, recomputation none/selective/full; sequence
parallelism whenever tp > 1. Each candidate is simulated; layouts that do not fit in memory are left out;
the rest are ranked by step time (then by memory). A first version for issue 8: exhaustive over a small
grid, a few seconds for a 2048-GPU cluster.

    llama-course plan configs/llama2-70b-a100.yaml --top 5
    llama-course plan configs/llama2-70b-a100.yaml --json
"""

from __future__ import annotations

import copy
import json

from simulator.config import ConfigError, load_config
from simulator.memory import uses_flash
from simulator.simulate import simulate

PLAN_FIELDS = ("dp", "tp", "pp", "vpp", "schedule", "zero_stage", "micro_batch_size",
               "activation_checkpointing", "sequence_parallel")


def candidates(cfg) -> list:
    """Parallel sections to try (dicts of PLAN_FIELDS), before validation."""
    n = cfg.cluster.num_gpus
    gpn = cfg.cluster.gpus_per_node or (n if cfg.cluster.gpu == "cpu" else 8)
    layers = cfg.model.n_layers
    tps = [t for t in (1, 2, 4, 8, 16) if t <= max(1, gpn) and n % t == 0]
    out = []
    for tp in tps:
        for pp in range(1, min(layers, n // tp) + 1):
            if (n // tp) % pp or layers % pp:
                continue
            dp = n // (tp * pp)
            schedules = [("1f1b", 1)]
            if pp > 1 and layers % (pp * 2) == 0:
                schedules.append(("interleaved_1f1b", 2))
            for schedule, vpp in schedules:
                for zero in (0, 1, 2, 3) if dp > 1 else (0,):
                    if zero == 3 and pp > 1:
                        continue
                    for mb in (1, 2, 4, 8):
                        for recompute in ("none", "selective", "full"):
                            out.append(dict(dp=dp, tp=tp, pp=pp, vpp=vpp, schedule=schedule, zero_stage=zero,
                                            micro_batch_size=mb, activation_checkpointing=recompute,
                                            sequence_parallel=tp > 1))
    return out


def plan(cfg, top: int = 5) -> list:
    """The best `top` layouts, best first: each the chosen parallel fields plus simulate()'s fields."""
    base = cfg.to_dict()
    base["cluster"]["num_gpus"] = cfg.cluster.num_gpus
    results = []
    fitted = set()
    for cand in candidates(cfg):
        # more recomputation is never faster: once a lighter one fits, skip the heavier ones
        key = tuple(v for k, v in cand.items() if k != "activation_checkpointing")
        if key in fitted:
            continue
        raw = copy.deepcopy(base)
        raw["parallel"].update(cand)
        try:
            c = load_config(raw)
        except ConfigError:
            continue
        if cand["activation_checkpointing"] == "selective" and uses_flash(c):
            continue                    # a fused attention kernel already recomputes its scores
        r = simulate(c)
        if not r["fits_in_memory"]:
            continue
        fitted.add(key)
        entry = {"parallel": {f: getattr(c.parallel, f) for f in PLAN_FIELDS}}
        entry.update(r)
        results.append(entry)
    results.sort(key=lambda e: (e["step_time_s"], e["memory_per_gpu_bytes"]["total"]))
    return results[:top]


def format_plan(entries: list) -> str:
    lines = ["| # | dp | tp | pp | v | zero | mb | recompute | step s | tokens/s/GPU | MFU | memory GB |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for i, e in enumerate(entries, 1):
        p = e["parallel"]
        lines.append(f"| {i} | {p['dp']} | {p['tp']} | {p['pp']} | {p['vpp']} | {p['zero_stage']} | "
                     f"{p['micro_batch_size']} | {p['activation_checkpointing']} | {e['step_time_s']:.3g} | "
                     f"{e['tokens_per_s_per_gpu']:,.0f} | {100 * e['mfu']:.1f}% | "
                     f"{e['memory_per_gpu_bytes']['total'] / 1e9:.1f} |")
    if not entries:
        lines.append("(no layout fits in memory)")
    return "\n".join(lines)


def cli(args) -> int:
    """`llama-course plan CONFIG [--top K] [--json]`."""
    cfg = load_config(args.config, getattr(args, "overrides", None) or [])
    entries = plan(cfg, top=max(1, getattr(args, "top", 5) or 5))
    print(json.dumps(entries, indent=2) if getattr(args, "json", False) else format_plan(entries))
    return 0
