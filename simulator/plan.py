"""Plan: the fastest dp x tp x pp layout for a model on a cluster, found by search and explained in words.

Keeps the model, cluster, sequence length, global batch and precision of the config and searches

    tp          powers of two up to a node (tensor parallelism wants NVLink), dividing heads and kv heads
    pp          divisors of num_gpus / tp, at most the layers (uneven stages allowed, as Llama 3's 126 / 16)
    schedule    gpipe, 1f1b, and interleaved_1f1b with vpp in 2, 3, 4, 6, 8 (vpp dividing layers / pp)
    zero_stage  0-3, where the capability table (capabilities.py) says the runtime runs it for the layout
    micro_batch 1, 2, 4, 8, 16 sequences
    recompute   none, selective (only without a fused attention kernel), full
    sequence parallelism whenever tp > 1

Search (branch and bound, hundreds to thousands of layouts in seconds):

  1. only layouts the runtime runs are candidates (the capability table, with the config's strategy,
     implementation, compression, policy and precision); every candidate is validated and checked for
     memory with the closed forms of
     `memory.py` (no simulation); what does not fit is dropped, and only the lightest recomputation that
     fits is kept (more recomputation is never faster);
  2. each survivor gets a cheap lower bound on its step time: its fullest pipeline rank's compute,
     m x sum of (F + B + recompute) of its blocks, plus the smallest possible bubble, (p - 1) x one virtual
     stage's F + B, plus its optimizer step; communication only adds to that;
  3. candidates are simulated in order of their bound, sharing one collective cache (symmetric groups of
     the same size and bytes are simulated once for the whole search), and the search stops when the next
     bound is slower than the K-th best simulated layout: nothing after it can enter the top K.

Ranking: step time (the global batch is fixed, so this is throughput), or, when `faults.gpu_mtbf_hours`
is set and `simulator/fault_tolerance.py` reports it, expected time to train with failures (goodput).
The winner is explained: where its step goes, and how much slower the best layout of every other tp, pp,
ZeRO stage, micro-batch, recomputation and schedule is (a choice the bound pruned whole has its most
promising layout simulated for the explanation: one extra simulation per choice, not per layout).

    llama-course plan configs/llama-65b-a100.yaml --top 5
    llama-course plan configs/llama3-405b-h100.yaml --json
"""

from __future__ import annotations

import copy
import heapq
import json
import math
import time

from simulator import capabilities
from simulator.collectives import CommModel
from simulator.compute import block_times, optimizer_time
from simulator.config import ConfigError, load_config, resolve
from simulator.hardware import device_memory, hardware_for
from simulator.memory import layers_per_virtual_stage, layout_memory, uses_flash, virtual_stage_params
from simulator.simulate import simulate
from simulator.topology import Cluster

PLAN_FIELDS = ("dp", "tp", "pp", "vpp", "schedule", "zero_stage", "micro_batch_size",
               "activation_checkpointing", "sequence_parallel")
MICRO_BATCHES = (1, 2, 4, 8, 16)
VIRTUAL_STAGES = (2, 3, 4, 6, 8)
RECOMPUTE = ("none", "selective", "full")
MAX_PP = 128
EXPLAIN_DIMENSIONS = (("tp", "tensor parallel"), ("pp", "pipeline parallel"), ("zero_stage", "ZeRO stage"),
                      ("micro_batch_size", "micro-batch"), ("activation_checkpointing", "recomputation"),
                      ("schedule", "schedule"))


class PlanComm(CommModel):
    """Collective times for a search: the same answers as CommModel, far fewer simulations.

    Ring, hierarchical, all-to-all and send are affine in the bytes S: every step moves equal chunks that
    start together on an idle network, so t(S) = a + b S, and two simulated sizes give every size of that
    group (the tests hold it to the exact simulation). Tree all-reduce pipelines a size-dependent number of
    chunks, so it is simulated per size, with sizes rounded to 1% (a 0.5% error at most in its bandwidth term).
    """

    AFFINE = ("ring", "hierarchical")
    PROBES = (1 << 20, 1 << 30)

    def __init__(self, cluster: Cluster):
        super().__init__(cluster)
        self._affine: dict = {}
        self._algorithms: dict = {}

    def time(self, kind: str, ranks, nbytes: float, algorithm: str = "auto", back_to_back: bool = False) -> float:
        ranks = tuple(ranks)
        if len(ranks) <= 1 or nbytes <= 0:
            return 0.0
        measured = self.cluster.hw.measured_collective(kind, len(ranks), nbytes, back_to_back)
        if measured is not None:
            return measured
        algs = self._algorithms.get((kind, ranks, algorithm))
        if algs is None:
            algs = self._algorithms[(kind, ranks, algorithm)] = self.candidates(kind, ranks, algorithm)
        best = float("inf")
        for alg in algs:
            if alg in self.AFFINE or kind in ("send", "all_to_all"):
                key = (kind, ranks, alg)
                ab = self._affine.get(key)
                if ab is None:
                    t1, t2 = (super(PlanComm, self).time(kind, ranks, s, alg) for s in self.PROBES)
                    slope = (t2 - t1) / (self.PROBES[1] - self.PROBES[0])
                    ab = self._affine[key] = (t1 - slope * self.PROBES[0], slope)
                t = ab[0] + ab[1] * nbytes
            else:
                t = super().time(kind, ranks, 2.0 ** (round(math.log2(nbytes) * 70) / 70), alg)
            best = min(best, t)
        return best


def candidates(cfg) -> list:
    """Parallel sections to try (dicts of PLAN_FIELDS): layouts the capability table allows with the config's
    other fields, before validation and memory checks."""
    n = cfg.cluster.num_gpus
    gpn = cfg.cluster.gpus_per_node or (n if cfg.cluster.gpu == "cpu" else 8)
    m = cfg.model
    g = cfg.parallel.global_batch_size
    tps = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= max(1, gpn) and n % t == 0
           and m.n_heads % t == 0 and m.n_kv_heads % t == 0]
    recomputes = [r for r in RECOMPUTE if not (r == "selective" and uses_flash(cfg))]
    out = []
    for tp in tps:
        for pp in (x for x in range(1, min(m.n_layers, n // tp, MAX_PP) + 1) if (n // tp) % x == 0):
            dp = n // (tp * pp)
            for mb in MICRO_BATCHES:
                if g % (dp * mb):
                    continue
                n_micro = g // (dp * mb)
                schedules = [("1f1b", 1)]
                if pp > 1:
                    schedules = [("gpipe", 1)] + (schedules if n_micro >= pp else [])
                    schedules += [("interleaved_1f1b", v) for v in VIRTUAL_STAGES
                                  if m.n_layers % (pp * v) == 0 and n_micro % pp == 0]
                for schedule, vpp in schedules:
                    for zero in (0, 1, 2, 3):
                        if not capabilities.supported(capabilities.key(cfg, dp=dp, tp=tp, pp=pp, zero_stage=zero,
                                                                       schedule=schedule)):
                            continue
                        for recompute in recomputes:
                            out.append(dict(dp=dp, tp=tp, pp=pp, vpp=vpp, schedule=schedule, zero_stage=zero,
                                            micro_batch_size=mb, activation_checkpointing=recompute,
                                            sequence_parallel=tp > 1))
    return out


def lower_bound(cfg, hw, cache: dict | None = None) -> float:
    """Seconds no simulation of this layout can beat: compute of the fullest pipeline rank, the least
    bubble of its schedule and its optimizer step (communication, stragglers and imbalance only add)."""
    p, m = cfg.parallel, cfg.model
    cache = {} if cache is None else cache
    key = (p.micro_batch_size, p.tp, p.sequence_parallel, p.activation_checkpointing)
    blk = cache.get(key)
    if blk is None:
        blk = cache[key] = block_times(m, cfg.seq_len, p.micro_batch_size, p.tp, p.sequence_parallel,
                                       cfg.training.precision, uses_flash(cfg), p.activation_checkpointing, hw)
    per_block = blk.forward + blk.backward + blk.recompute
    layers = layers_per_virtual_stage(m.n_layers, p.pp * p.vpp)
    rank_blocks = [sum(layers[c * p.pp + r] for c in range(p.vpp)) for r in range(p.pp)]
    compute = cfg.grad_accum_steps * max(rank_blocks) * per_block
    bubble = (p.pp - 1) * min(layers) * (blk.forward + blk.backward)
    psi = virtual_stage_params(cfg, layers)
    psi_min = min(sum(psi[c * p.pp + r] for c in range(p.vpp)) for r in range(p.pp))
    opt = optimizer_time(psi_min / (p.dp if p.zero_stage >= 1 else 1), cfg.training.precision,
                         cfg.training.optimizer, hw)
    return compute + bubble + opt


def _objective(result: dict, by_goodput: bool, total_tokens: float | None = None) -> float:
    """Seconds per token: of the step, or of the whole run with failures (both on the same scale, so the
    step-time lower bound prunes either)."""
    if by_goodput and result.get("time_to_train_with_failures_s") and total_tokens:
        return result["time_to_train_with_failures_s"] / total_tokens
    if by_goodput and result.get("expected_goodput"):
        return result["step_time_s"] / result["expected_goodput"] / result["tokens_per_step"]
    return result["step_time_s"] / result["tokens_per_step"]


def plan(cfg, top: int = 5, stats: dict | None = None) -> list:
    """The best `top` layouts, best first: each {"parallel": {...}} plus simulate()'s fields.

    `stats` (a dict, optional) receives the search's counts and the explanation of the winner."""
    if not isinstance(cfg, type(load_config())):
        cfg = load_config(cfg, runtime=False)               # the layout is what the search chooses
    t0 = time.perf_counter()
    stats = {} if stats is None else stats
    by_goodput = cfg.faults.gpu_mtbf_hours is not None
    hw = hardware_for(cfg)
    capacity = device_memory(hw)
    comm = PlanComm(Cluster(hw, cfg.cluster.num_gpus))      # one collective cache for the whole search
    cands = candidates(cfg)
    if not cands and not capabilities.supported(capabilities.key(cfg)):
        raise ConfigError(capabilities.refusal(capabilities.key(cfg)))   # no layout of it runs: say why
    fitted: set = set()
    excluded: list = []         # (excess bytes, candidate) of layouts that do not fit
    viable: list = []           # (bound, index, cfg, candidate)
    bound_cache: dict = {}
    invalid = 0
    for i, cand in enumerate(cands):
        key = tuple(v for k, v in cand.items() if k != "activation_checkpointing")
        if key in fitted:
            continue            # a lighter recomputation of this layout already fits: this one is slower
        c = copy.deepcopy(cfg)
        for f, v in cand.items():
            setattr(c.parallel, f, v)
        c.cluster.num_gpus = cfg.cluster.num_gpus
        try:
            resolve(c)
        except ConfigError:
            invalid += 1
            continue
        layers = layers_per_virtual_stage(c.model.n_layers, c.parallel.pp * c.parallel.vpp)
        mem, _ = layout_memory(c, layers, c.grad_accum_steps)
        if mem["total"] > capacity:
            excluded.append((mem["total"] - capacity, cand))
            continue
        fitted.add(key)
        viable.append((lower_bound(c, hw, bound_cache), i, c, cand))
    viable.sort(key=lambda x: (x[0], x[1]))

    best: list = []             # max-heap of (-objective, index, entry) holding the top K
    floors: dict = {}           # (dimension, value) -> (seconds per token, simulated?, config) best seen
    simulated = 0
    for bound, i, c, cand in viable:
        kth = -best[0][0] if len(best) >= top else float("inf")
        per_token = bound / c.tokens_per_step
        if per_token > kth:
            for dim, _ in EXPLAIN_DIMENSIONS:       # the rest are only known by their bounds
                if (dim, cand[dim]) not in floors:
                    floors[(dim, cand[dim])] = (per_token, False, c)
            continue
        r = simulate(c, comm=comm)
        simulated += 1
        if not r["fits_in_memory"]:
            continue
        entry = {"parallel": {f: getattr(c.parallel, f) for f in PLAN_FIELDS}}
        entry.update(r)
        obj = _objective(r, by_goodput, cfg.training.total_tokens)
        entry["lower_bound_s"] = bound
        for dim, _ in EXPLAIN_DIMENSIONS:
            old = floors.get((dim, cand[dim]))
            if old is None or not old[1] or obj < old[0]:
                floors[(dim, cand[dim])] = (obj, True, c)
        item = (-obj, -i, entry)
        if len(best) < top:
            heapq.heappush(best, item)
        elif item > best[0]:
            heapq.heapreplace(best, item)
    # a choice the bound pruned entirely: simulate its most promising layout, so the explanation says what
    # that choice really costs (one simulation per pruned choice, not per layout)
    for key, (_, exact, c) in list(floors.items()):
        if not exact:
            r = simulate(c, comm=comm)
            simulated += 1
            if r["fits_in_memory"]:
                floors[key] = (_objective(r, by_goodput, cfg.training.total_tokens), True, c)
    entries = [e for _, _, e in sorted(best, key=lambda x: (-x[0], -x[1]))]
    stats.update({"candidates": len(cands), "invalid": invalid, "excluded_memory": len(excluded),
                  "viable": len(viable), "simulated": simulated, "seconds": time.perf_counter() - t0,
                  "objective": "time_to_train_with_failures" if by_goodput else "step_time"})
    if entries:
        stats["explanation"] = explain(entries, floors, excluded, stats, capacity, by_goodput,
                                       cfg.training.total_tokens)
        entries[0]["explanation"] = stats["explanation"]
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    return entries


def explain(entries: list, floors: dict, excluded: list, stats: dict, capacity: float, by_goodput: bool,
            total_tokens: float | None = None) -> str:
    """Why the winner wins, in words: its step, what does not fit, and what each alternative costs."""
    w = entries[0]
    p, b = w["parallel"], w["breakdown_s"]
    step = w["step_time_s"]
    lines = [f"Best: dp {p['dp']} x tp {p['tp']} x pp {p['pp']}"
             + (f" (interleaved, vpp {p['vpp']})" if p["vpp"] > 1 else (f", {p['schedule']}" if p["pp"] > 1 else ""))
             + f", ZeRO-{p['zero_stage']}, micro-batch {p['micro_batch_size']}, recompute "
             f"{p['activation_checkpointing']}" + (", sequence parallel" if p["sequence_parallel"] else "")
             + f": {step:.3g} s per step, {w['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, MFU {w['mfu']:.1%}, "
             f"{w['memory_per_gpu_bytes']['total'] / 1e9:.1f} of {capacity / 1e9:.0f} GB."]
    parts = ", ".join(f"{k.replace('_', ' ')} {v / step:.0%}" for k, v in b.items() if v / step >= 0.005)
    lines.append(f"Its step is {parts}.")
    if by_goodput and w.get("expected_goodput"):
        lines.append(f"Ranked by time to train with failures: expected goodput {w['expected_goodput']:.1%}.")
    if excluded:
        worst = min(excluded, key=lambda x: x[0])
        lines.append(f"{stats['excluded_memory']} layouts do not fit in memory (the closest misses by "
                     f"{worst[0] / 1e9:.1f} GB).")
    best = _objective(w, by_goodput, total_tokens)
    alts = []
    for dim, label in EXPLAIN_DIMENSIONS:
        values = sorted((value, floor) for (d, value), floor in floors.items() if d == dim and value != p[dim])
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
    lines = ["| # | dp | tp | pp | v | schedule | zero | mb | recompute | step s | tokens/s/GPU | MFU | memory GB |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for i, e in enumerate(entries, 1):
        p = e["parallel"]
        lines.append(f"| {i} | {p['dp']} | {p['tp']} | {p['pp']} | {p['vpp']} | {p['schedule'] if p['pp'] > 1 else '-'} | "
                     f"{p['zero_stage']} | {p['micro_batch_size']} | {p['activation_checkpointing']} | "
                     f"{e['step_time_s']:.3g} | {e['tokens_per_s_per_gpu']:,.0f} | {100 * e['mfu']:.1f}% | "
                     f"{e['memory_per_gpu_bytes']['total'] / 1e9:.1f} |")
    if not entries:
        lines.append("(no layout fits in memory)")
    if stats and stats.get("explanation"):
        lines += ["", stats["explanation"], f"({stats['seconds']:.1f} s)"]
    return "\n".join(lines)


def cli(args) -> int:
    """`llama-course plan CONFIG [--top K] [--json]`. The config's own layout (dp, tp, pp, zero_stage, ...)
    is only where the search starts, so the capability table judges the layouts searched, not it; a config
    none of whose layouts the runtime runs (say, compression with implementation torch) is refused."""
    cfg = load_config(args.config, getattr(args, "overrides", None) or [], runtime=False)
    stats: dict = {}
    entries = plan(cfg, top=max(1, getattr(args, "top", 5) or 5), stats=stats)
    print(json.dumps(entries, indent=2) if getattr(args, "json", False) else format_plan(entries, stats))
    return 0
