"""Plan: the fastest dp x tp x pp layout for a model on a cluster, found by search and explained in words.

Keeps the model, cluster, sequence length, global batch and precision of the config and searches

    tp          powers of two up to a node (tensor parallelism wants NVLink), dividing heads and kv heads
    cp          context parallelism, powers of two while each rank keeps at least MIN_CP_TOKENS of the
                sequence (shorter chunks make small matmuls and latency-bound gathers)
    ep          a mixture of experts: expert parallelism, powers of two dividing the experts and the dp x cp
                replicas (the ep column of the capability table; only ep 1 while the table has none)
    pp          divisors of num_gpus / tp, at most the layers (uneven stages allowed, as Llama 3's 126 / 16)
    schedule    gpipe, 1f1b, zero_bubble, and interleaved_1f1b with vpp in 2, 3, 4, 6, 8 (vpp dividing
                layers / pp)
    zero_stage  0-3, where the capability table (capabilities.py) says the runtime runs it for the layout
    micro_batch 1, 2, 4, 8, 16 sequences
    recompute   none, selective (only without a fused attention kernel), full
    sequence parallelism whenever tp > 1

The config's own layout is not validated (`load_plan_config`): the search starts from the model, the
cluster and the batch, and validates each candidate.

Search (branch and bound, hundreds to thousands of layouts in seconds):

  1. only layouts the runtime runs are candidates (the capability table, with the config's strategy,
     implementation, compression, policy and precision); every candidate is validated and checked for
     memory with the closed forms of
     `memory.py` (no simulation); what does not fit is dropped, and only the lightest recomputation that
     fits is kept (more recomputation is never faster);
  2. each survivor gets a lower bound on its step time without a simulation
     (`parallel_3d.step_lower_bound`): its fullest pipeline rank's m micro-batches of forward and backward
     with their exposed tensor-parallel and ZeRO collectives, the least bubble of its schedule and its
     optimizer step; gradient sync and sends only add to that;
  3. candidates are simulated in order of their bound, sharing one collective model (`PlanComm`: a group's
     collectives are simulated for two sizes and every other size follows), and the search stops when
     the next bound is slower than the K-th best simulated layout: nothing after it can enter the top K.

Ranking: step time (the global batch is fixed, so this is throughput), or, when `faults.gpu_mtbf_hours`
is set and `simulator/fault_tolerance.py` reports it, expected time to train with failures (goodput).
`plan_report.py` explains the winner: where its step goes, how it beats the runner-up, and how much
slower the best layout of every other tp, pp, ZeRO stage, micro-batch, recomputation and schedule is (a
choice the bound pruned whole has its most promising layout simulated: one simulation per choice).
The CLI prints the search's progress on stderr.

    llama-course plan configs/llama-7b-a100.yaml --top 5
    llama-course plan configs/llama3-405b-h100.yaml --json
"""

from __future__ import annotations

import copy
import heapq
import json
import os
import sys
import time

import yaml

from simulator import capabilities
from simulator.collectives import CommModel, tree_chunks, tree_shape, tree_stages
from simulator.config import ConfigError, ParallelConfig, apply_override, load_config, resolve
from simulator.expert_parallel import expert_degrees
from simulator.hardware import device_memory, hardware_for
from simulator.memory import layout_memory, stage_layers, uses_flash
from simulator.network import transfer_time
from simulator.parallel_3d import step_lower_bound
from simulator.plan_report import EXPLAIN_DIMENSIONS, explain, format_plan, objective
from simulator.simulate import simulate
from simulator.topology import Cluster

PLAN_FIELDS = ("dp", "cp", "ep", "tp", "pp", "vpp", "schedule", "zero_stage", "micro_batch_size",
               "activation_checkpointing", "sequence_parallel", "first_stage_layers", "last_stage_layers")
SPLIT_FIELDS = ("first_stage_layers", "last_stage_layers")
"""In a plan entry only when the layout makes the first and last stages lighter (so that every entry's
`parallel` items can be passed back as `--set parallel.K=V`)."""
MICRO_BATCHES = (1, 2, 4, 8, 16)
VIRTUAL_STAGES = (2, 3, 4, 6, 8)
RECOMPUTE = ("none", "selective", "selective_op", "full")
MAX_PP = 128
MIN_CP_TOKENS = 2048
"""The planner splits a sequence over cp ranks only while each keeps at least this many tokens."""


class PlanComm(CommModel):
    """Collective times for a search: the same answers as CommModel, far fewer simulations.

    Ring, hierarchical, all-to-all and send are affine in the bytes S: every step moves equal chunks that
    start together on an idle network, so t(S) = a + b S, and two simulated sizes give every size of that
    group (the tests hold it to the exact simulation). Tree all-reduce pipelines a size-dependent number k
    of chunks, but each of its steps moves flows that all scale with S / k on a fixed pattern, so one step
    of each phase is affine in that scale: two simulated steps per group give every size,
    t(S) = sum over phases of steps(S) x (a + b S / k(S)).
    """

    AFFINE = ("ring", "hierarchical")
    PROBES = (1 << 20, 1 << 30)

    def __init__(self, cluster: Cluster):
        super().__init__(cluster)
        self._affine: dict = {}
        self._algorithms: dict = {}
        self._times: dict = {}

    def time(self, kind: str, ranks, nbytes: float, algorithm: str = "auto", back_to_back: bool = False) -> float:
        ranks = tuple(ranks)
        if len(ranks) <= 1 or nbytes <= 0:
            return 0.0
        measured = self.cluster.hw.measured_collective(kind, len(ranks), nbytes, back_to_back)
        if measured is not None:
            return measured
        key = (kind, ranks, nbytes, algorithm)
        t = self._times.get(key)
        if t is None:
            algs = self._algorithms.get((kind, ranks, algorithm))
            if algs is None:
                algs = self._algorithms[(kind, ranks, algorithm)] = self.candidates(kind, ranks, algorithm)
            t = self._times[key] = min(self._tree(kind, ranks, nbytes) if alg == "tree"
                                       else self._affine_time(kind, ranks, nbytes, alg) for alg in algs)
        return t

    def _affine_time(self, kind: str, ranks: tuple, nbytes: float, alg: str) -> float:
        if kind in ("reduce_scatter", "all_gather") and alg in self.AFFINE:
            # the same steps as the all-reduce's, half as many (ring: n - 1 of 2 (n - 1); hierarchical:
            # one intra-node phase and half the inter-node steps)
            return self._affine_time("all_reduce", ranks, nbytes, alg) / 2
        key = (kind, ranks, alg)
        ab = self._affine.get(key)
        if ab is None:
            t1, t2 = (super(PlanComm, self).time(kind, ranks, s, alg) for s in self.PROBES)
            slope = (t2 - t1) / (self.PROBES[1] - self.PROBES[0])
            ab = self._affine[key] = (t1 - slope * self.PROBES[0], slope)
        return ab[0] + ab[1] * nbytes

    def _tree(self, kind: str, ranks: tuple, nbytes: float) -> float:
        model = self._affine.get((kind, ranks, "tree"))
        if model is None:
            shape = tree_shape(ranks, self.cluster)
            probe = tree_stages(kind, ranks, self.PROBES[1], self.cluster)
            steps = [(transfer_time(self.cluster, flows), transfer_time(self.cluster, [(a, b, 2 * x) for a, b, x in flows]))
                     for flows, _ in probe]
            model = self._affine[(kind, ranks, "tree")] = (shape, self.PROBES[1] / tree_chunks(shape, self.PROBES[1]), steps)
        shape, ref, steps = model
        k = tree_chunks(shape, nbytes)
        scale = nbytes / k / ref
        return sum((shape[2] + k - 1) * (t1 + (t2 - t1) * (scale - 1)) for t1, t2 in steps)


def load_plan_config(source=None, overrides: list | None = None):
    """The config `plan` searches from: the model, cluster, batch and every other setting of `source` (a
    YAML path, a dict or None) with `overrides`, validated without its layout. The layout (PLAN_FIELDS) is
    what the search chooses, so a default one that cannot run (dp = 2,048 GPUs for a global batch of 1,024
    sequences) is no reason to stop: every candidate is validated on its own, the capability table included
    (the stand-in layout is not held to it). Raises ConfigError."""
    if isinstance(source, dict) or source is None:
        raw = copy.deepcopy(source or {})
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError:
            raise ConfigError(f"{path}: not valid YAML") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(raw, item)
    par, cl = raw.get("parallel") or {}, raw.get("cluster") or {}
    if not isinstance(par, dict) or not isinstance(cl, dict):
        return load_config(raw, runtime=False)       # the schema says what is wrong
    n = cl.get("num_gpus")
    if n is None:
        n = 1
        for key in ("dp", "cp", "tp", "pp"):
            n *= _count(f"parallel.{key}", par.get(key, 1) if par.get(key) is not None else 1)
    n = _count("cluster.num_gpus", n)
    batch = _count("parallel.global_batch_size", par.get("global_batch_size", ParallelConfig.global_batch_size))
    # a stand-in layout that always validates (dp = n, one sequence each), then the real batch
    raw["parallel"] = {**{k: v for k, v in par.items() if k not in PLAN_FIELDS}, "global_batch_size": n}
    raw["cluster"] = {**cl, "num_gpus": n}
    cfg = load_config(raw, runtime=False)            # the capability table judges each candidate instead
    cfg.parallel.global_batch_size = batch
    return cfg


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return value


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
    s = cfg.seq_len
    cps = [c for c in (1, 2, 4, 8, 16, 32) if c == 1 or (s % (2 * c) == 0 and s // c >= MIN_CP_TOKENS)]
    # expert parallelism is searched where the capability table says which ep the runtime runs (its ep column);
    # a dense model's candidates carry no ep (1)
    ep_column = "ep" in capabilities.COLUMNS
    ep_degrees = expert_degrees if ep_column else (lambda *_: (1,))
    out = []
    for tp, cp in ((t, c) for t in tps for c in cps if n % (t * c) == 0):
        for pp in (x for x in range(1, min(m.n_layers, n // (tp * cp), MAX_PP) + 1) if (n // (tp * cp)) % x == 0):
            dp = n // (tp * cp * pp)
            for mb in MICRO_BATCHES:
                if g % (dp * mb):
                    continue
                n_micro = g // (dp * mb)
                for ends, layers in stage_splits(m.n_layers, pp):
                    schedules = [("1f1b", 1)]
                    if pp > 1:
                        schedules = [("gpipe", 1)] + (schedules + [("zero_bubble", 1)] if n_micro >= pp else [])
                        schedules += [("interleaved_1f1b", v) for v in VIRTUAL_STAGES
                                      if layers % (pp * v) == 0 and n_micro % pp == 0]
                    for schedule, vpp in schedules:
                        for zero in (0, 1, 2, 3):
                            for ep in ep_degrees(m, dp * cp):
                                moe = {"ep": ep} if ep_column else {}
                                if not capabilities.supported(capabilities.key(cfg, dp=dp, tp=tp, pp=pp, zero_stage=zero,
                                                                               schedule=schedule, cp=cp, **moe)):
                                    continue
                                for recompute in recomputes:
                                    out.append(dict(dp=dp, cp=cp, tp=tp, pp=pp, vpp=vpp, schedule=schedule,
                                                    zero_stage=zero, micro_batch_size=mb,
                                                    activation_checkpointing=recompute, sequence_parallel=tp > 1,
                                                    first_stage_layers=ends, last_stage_layers=ends,
                                                    **({"ep": ep} if m.n_experts else {})))
    return out


def stage_splits(n_layers: int, pp: int) -> list:
    """How the planner may split the layers over pp stages: [(first and last stages' layers or None, the
    layer count interleaving must divide)]. An even split (None); and, from 3 stages, one layer fewer on
    the first and last stage than on the others when that makes the rest equal, as Llama 3 405B ran (126
    layers on 16 stages: 7, 14 x 8, 7; its first stage also holds the embedding, its last the head and
    loss), interleaving then dividing n_layers + 2."""
    out = [(None, n_layers)]
    if pp >= 3 and (n_layers + 2) % pp == 0 and (n_layers + 2) // pp >= 2:
        out.append(((n_layers + 2) // pp - 1, n_layers + 2))
    return out


def lower_bound(cfg, hw, comm: CommModel | None = None) -> float:
    """Seconds no simulation of this layout can beat (`parallel_3d.step_lower_bound`: the fullest rank's
    compute and exposed collectives, the least bubble, the optimizer), without simulating it."""
    if comm is None:
        comm = PlanComm(Cluster(hw, cfg.cluster.num_gpus))
    return step_lower_bound(cfg, hw, comm)


def plan(cfg, top: int = 5, stats: dict | None = None, progress=None) -> list:
    """The best `top` layouts, best first: each {"parallel": {...}} plus simulate()'s fields.

    `cfg`: a Config, or a YAML path or dict read by `load_plan_config` (its own layout is not checked).
    `stats` (a dict, optional) receives the search's counts and the explanation of the winner;
    `progress` (optional) is called with a line of text as the search goes (the CLI prints them on stderr)."""
    if not isinstance(cfg, type(load_config())):
        cfg = load_plan_config(cfg)
    say = progress or (lambda line: None)
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
        layers = stage_layers(c)
        mem, _ = layout_memory(c, layers, c.grad_accum_steps)
        if mem["total"] > capacity:
            excluded.append((mem["total"] - capacity, cand))
            continue
        fitted.add(key)
        viable.append((lower_bound(c, hw, comm), i, c, cand))
    viable.sort(key=lambda x: (x[0], x[1]))
    say(f"plan: {len(cands)} layouts of {cfg.cluster.num_gpus} GPUs: {invalid} invalid for this model and batch, "
        f"{len(excluded)} do not fit in memory, {len(viable)} to rank by their lower bound "
        f"({time.perf_counter() - t0:.1f} s)")
    last_said = time.perf_counter()

    keep = max(top, 2)          # the top K, and a runner-up for the explanation
    best: list = []             # max-heap of (-objective, index, entry) holding the best `keep`
    floors: dict = {}           # (dimension, value) -> (seconds per token, simulated?, config) best seen
    simulated = 0
    for bound, i, c, cand in viable:
        kth = -best[0][0] if len(best) >= keep else float("inf")
        per_token = bound / c.tokens_per_step
        if per_token > kth:
            for dim, _ in EXPLAIN_DIMENSIONS:       # the rest are only known by their bounds
                if (dim, cand.get(dim, 1)) not in floors:
                    floors[(dim, cand.get(dim, 1))] = (per_token, False, c)
            continue
        r = simulate(c, comm=comm)
        simulated += 1
        if time.perf_counter() - last_said > 1.0:
            last_said = time.perf_counter()
            lead = f", best so far {min(-x[0] for x in best) * c.tokens_per_step:.3g} s per step" \
                if best and not by_goodput else ""
            say(f"plan: simulated {simulated} layouts{lead}")
        if not r["fits_in_memory"]:
            continue
        entry = {"parallel": {f: getattr(c.parallel, f) for f in PLAN_FIELDS
                              if f not in SPLIT_FIELDS or getattr(c.parallel, f) is not None}}
        entry.update(r)
        obj = objective(r, by_goodput, cfg.training.total_tokens)
        entry["lower_bound_s"] = bound
        for dim, _ in EXPLAIN_DIMENSIONS:
            old = floors.get((dim, cand.get(dim, 1)))
            if old is None or not old[1] or obj < old[0]:
                floors[(dim, cand.get(dim, 1))] = (obj, True, c)
        item = (-obj, -i, entry)
        if len(best) < keep:
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
                floors[key] = (objective(r, by_goodput, cfg.training.total_tokens), True, c)
    say(f"plan: {simulated} layouts simulated, the rest pruned ({time.perf_counter() - t0:.1f} s)")
    ranked = [e for _, _, e in sorted(best, key=lambda x: (-x[0], -x[1]))]
    entries = ranked[:top]
    stats.update({"candidates": len(cands), "invalid": invalid, "excluded_memory": len(excluded),
                  "viable": len(viable), "simulated": simulated, "seconds": time.perf_counter() - t0,
                  "objective": "time_to_train_with_failures" if by_goodput else "step_time"})
    if entries:
        stats["explanation"] = explain(ranked, floors, excluded, stats, capacity, by_goodput,
                                       cfg.training.total_tokens)
        entries[0]["explanation"] = stats["explanation"]
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    return entries


def cli(args) -> int:
    """`llama-course plan CONFIG [--top K] [--json]`. The config's own layout (dp, tp, pp, zero_stage, ...)
    is only where the search starts, so the capability table judges the layouts searched, not it; a config
    none of whose layouts the runtime runs (say, compression with implementation torch) is refused."""
    cfg = load_plan_config(args.config, getattr(args, "overrides", None) or [])
    stats: dict = {}
    entries = plan(cfg, top=max(1, getattr(args, "top", 5) or 5), stats=stats, progress=_stderr_progress())
    print(json.dumps(entries, indent=2) if getattr(args, "json", False) else format_plan(entries, stats))
    return 0


def _stderr_progress():
    """Progress lines on stderr: rewritten in place on a terminal, one per line elsewhere."""
    tty = sys.stderr.isatty()

    def say(line: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if "pruned" in line else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return say
