"""Plan report: why the planner's winner wins, in words and in a table (`llama-course plan`).

The explanation gives the winner's step and where it goes; how it beats the runner-up (the second-best
layout simulated), part by part of the step; what did not fit; and, for every other value of each
dimension of the search (tp, cp, ep, pp, ZeRO stage, micro-batch, recomputation, schedule), how much slower the
best layout with that value is. `simulator/plan.py` runs the search.

    llama-course plan configs/llama-7b-a100.yaml --top 5
"""

from __future__ import annotations

EXPLAIN_DIMENSIONS = (("tp", "tensor parallel"), ("cp", "context parallel"), ("ep", "expert parallel"),
                      ("pp", "pipeline parallel"), ("zero_stage", "ZeRO stage"),
                      ("micro_batch_size", "micro-batch"), ("activation_checkpointing", "recomputation"),
                      ("schedule", "schedule"))
LABELS = dict(EXPLAIN_DIMENSIONS, dp="dp", vpp="virtual stages", sequence_parallel="sequence parallel")


def objective(result: dict, by_goodput: bool, total_tokens: float | None = None) -> float:
    """Seconds per token: of the step, or of the whole run with failures (both on the same scale, so the
    step-time lower bound prunes either)."""
    if by_goodput and result.get("time_to_train_with_failures_s") and total_tokens:
        return result["time_to_train_with_failures_s"] / total_tokens
    if by_goodput and result.get("expected_goodput"):
        return result["step_time_s"] / result["expected_goodput"] / result["tokens_per_step"]
    return result["step_time_s"] / result["tokens_per_step"]


def ends(p: dict) -> str:
    """The first and last stages' layer counts when the planner made them lighter ("7/7"), else ""."""
    first, last = p.get("first_stage_layers"), p.get("last_stage_layers")
    return "" if first is None and last is None else f"{first if first is not None else '-'}/{last if last is not None else '-'}"


def describe(p: dict) -> str:
    """A layout in a few words: dp x tp x pp, schedule, ZeRO, micro-batch, recomputation."""
    return (f"dp {p['dp']}" + (f" x cp {p['cp']}" if p.get("cp", 1) > 1 else "") + f" x tp {p['tp']} x pp {p['pp']}"
            + (f", ep {p['ep']}" if p.get("ep", 1) > 1 else "")
            + (f" (interleaved, vpp {p['vpp']})" if p["vpp"] > 1 else (f", {p['schedule']}" if p["pp"] > 1 else ""))
            + (f", first/last stage {ends(p)} layers" if ends(p) else "")
            + f", ZeRO-{p['zero_stage']}, micro-batch {p['micro_batch_size']}, recompute "
              f"{p['activation_checkpointing']}" + (", sequence parallel" if p["sequence_parallel"] else ""))


def versus_runner_up(w: dict, r: dict, by_goodput: bool, total_tokens: float | None) -> str:
    """How the winner beats the runner-up: the choices they differ in, and the parts of the step (and the
    memory) that differ, largest first."""
    diff = [f"{LABELS.get(k, k)} {w['parallel'][k]} vs {v}" for k, v in r["parallel"].items()
            if w["parallel"].get(k) != v and k != "dp"]
    margin = objective(r, by_goodput, total_tokens) / objective(w, by_goodput, total_tokens) - 1
    step = w["step_time_s"]
    keys = list(dict.fromkeys(list(w["breakdown_s"]) + list(r["breakdown_s"])))
    deltas = sorted(((r["breakdown_s"].get(k, 0.0) - w["breakdown_s"].get(k, 0.0), k) for k in keys),
                    key=lambda x: -abs(x[0]))
    parts = [f"{k.replace('_', ' ')} {d:+.3g} s" for d, k in deltas if abs(d) >= 0.001 * step]
    mem = (r["memory_per_gpu_bytes"]["total"] - w["memory_per_gpu_bytes"]["total"]) / 1e9
    text = (f"It beats the runner-up, {describe(r['parallel'])} ({', '.join(diff) or 'the same choices'}), "
            f"by {margin:.1%}" + (f": the runner-up's step has {', '.join(parts)}" if parts else "")
            + f"; the runner-up uses {abs(mem):.1f} GB per GPU {'more' if mem >= 0 else 'less'}.")
    if margin < 0.005:
        text += " Within 0.5% they are a tie: the simulator cannot tell them apart; take either."
    return text


def explain(entries: list, floors: dict, excluded: list, stats: dict, capacity: float, by_goodput: bool,
            total_tokens: float | None = None) -> str:
    """Why the winner wins, in words: its step, what does not fit, and what each alternative costs."""
    w = entries[0]
    p, b = w["parallel"], w["breakdown_s"]
    step = w["step_time_s"]
    lines = [f"Best: {describe(p)}: {step:.3g} s per step, {w['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, MFU {w['mfu']:.1%}, "
             f"{w['memory_per_gpu_bytes']['total'] / 1e9:.1f} of {capacity / 1e9:.0f} GB."]
    parts = ", ".join(f"{k.replace('_', ' ')} {v / step:.0%}" for k, v in b.items() if v / step >= 0.005)
    lines.append(f"Its step is {parts}.")
    if len(entries) > 1:
        lines.append(versus_runner_up(w, entries[1], by_goodput, total_tokens))
    if by_goodput and w.get("expected_goodput"):
        lines.append(f"Ranked by time to train with failures: expected goodput {w['expected_goodput']:.1%}.")
    if excluded:
        worst = min(excluded, key=lambda x: x[0])
        lines.append(f"{stats['excluded_memory']} layouts do not fit in memory (the closest misses by "
                     f"{worst[0] / 1e9:.1f} GB).")
    best = objective(w, by_goodput, total_tokens)
    alts = []
    for dim, label in EXPLAIN_DIMENSIONS:
        values = sorted((value, floor) for (d, value), floor in floors.items() if d == dim and value != p.get(dim, 1))
        for value, (per_token, exact, _) in values:
            alts.append(f"{label} {value}: {'' if exact else 'at least '}{per_token / best - 1:+.1%}")
    if alts:
        lines.append("Slower by, for the best layout of every other choice (for a choice the bound pruned whole, "
                     "its most promising layout): " + "; ".join(alts) + ".")
    lines.append(f"Searched {stats['candidates']} layouts: {stats['excluded_memory']} do not fit, "
                 f"{stats['viable']} fit (with the least recomputation that fits), {stats['simulated']} simulated, "
                 f"the rest pruned by their lower bound.")
    return "\n".join(lines)


def format_plan(entries: list, stats: dict | None = None) -> str:
    """The planner's table (*ends*: the first and last stages' layers where they hold fewer, "-" for an even
    split) and its explanation."""
    lines = ["| # | dp | cp | ep | tp | pp | v | ends | schedule | zero | mb | recompute | step s | tokens/s/GPU | MFU | "
             "memory GB |", "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for i, e in enumerate(entries, 1):
        p = e["parallel"]
        lines.append(f"| {i} | {p['dp']} | {p.get('cp', 1)} | {p.get('ep', 1)} | {p['tp']} | {p['pp']} | {p['vpp']} | {ends(p) or '-'} | "
                     f"{p['schedule'] if p['pp'] > 1 else '-'} | "
                     f"{p['zero_stage']} | {p['micro_batch_size']} | {p['activation_checkpointing']} | "
                     f"{e['step_time_s']:.3g} | {e['tokens_per_s_per_gpu']:,.0f} | {100 * e['mfu']:.1f}% | "
                     f"{e['memory_per_gpu_bytes']['total'] / 1e9:.1f} |")
    if not entries:
        lines.append("(no layout fits in memory)")
    if stats and stats.get("explanation"):
        lines += ["", stats["explanation"], f"({stats['seconds']:.1f} s)"]
    return "\n".join(lines)
