"""Load balancing (cost model): what a straggler costs under BSP, what each policy recovers, and how
requests should be dispatched to unequal servers.

Per step, rank i computes its n_i sequences at t_i seconds each (t_i = f_i t for a rank `faults.slow`
makes f_i times slower); BSP waits for the slowest, then all-reduces:

    none            step = max_i (G/N) t_i + T_ar              with one straggler: f (G/N) t + T_ar
    dynamic_batch   step = G / sum_i (1/t_i) + T_ar            recovers N / (sum_i 1/f_i) of the loss
    backup_workers  step = (N-b)-th smallest of (G/N) t_i + T_ar; the update holds (N-b)/N G sequences

On `cluster.gpu: cpu` the ranks are processes sharing the machine's cores: while k ranks compute each
runs at 1 / hw.sharing_slowdown(k) of its speed (min(1, c/k) on c ideal cores; `bench` measures the real
sharing), and a straggler made by sleeping (faults.slow) frees its core
while it sleeps. `rank_finish_times` simulates exactly that (processor sharing, event by event); it is what
makes the prediction hold on a 2-core machine running 4 ranks. dynamic_batch's shares follow measured
speeds, which depend on the shares; `predict` iterates to the fixed point as the runtime does step by step.

Dispatch (`dispatch`): a stream of requests (Poisson arrivals, exponential work) to servers of speeds s_j:
round robin ignores speed and load (a slow server's queue grows without bound once its share of the load
exceeds its speed), weighted round robin sends in proportion to speed (stable, but blind to queues), least
loaded (join the queue with the least outstanding work) adapts to both and has the lowest tail latency.

Seed questions: 6 (load balancing), 16 (stragglers), 24 (heterogeneous hardware), 30 (scheduling).

    llama-course simulate configs/tiny.yaml --set cluster.num_gpus=4 --set 'faults.slow={3: 3}' \\
        --set load_balance.policy=dynamic_batch
    python -c "from simulator.load_balancing import dispatch_table; print(dispatch_table())"
"""

from __future__ import annotations

import math
import os
import random

from simulator.collectives import CommModel
from simulator.config import Config, load_config
from simulator.hardware import hardware_for
from simulator.memory import virtual_stage_params
from simulator.parallel_3d import Layout, simulate_step
from simulator.simulate import Context
from simulator.topology import Cluster

POLICIES = ("none", "dynamic_batch", "backup_workers")


def split_sizes(total: int, weights) -> list:
    """Integers proportional to weights summing to total, largest remainder (as the runtime's data.py)."""
    s = float(sum(weights))
    quota = [total * w / s for w in weights]
    sizes = [int(math.floor(q)) for q in quota]
    for i in sorted(range(len(weights)), key=lambda i: (-(quota[i] - sizes[i]), i))[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def rank_finish_times(work: list, factors: list, cores: float | None, stop_after: int | None = None) -> list:
    """When each rank finishes its micro-batches. work[i] = CPU seconds of each of rank i's micro-batches
    (run alone); after each, a rank with factor f sleeps (f - 1) x the wall time that micro-batch took.
    `cores` None: every rank has its own device; a number: ranks share that many ideal cores; a function
    k -> slowdown: each of k computing ranks runs that many times slower than alone. `stop_after` k: stop when k ranks are done (backup
    workers; the rest are abandoned, their times are inf)."""
    n = len(work)
    phase = [0] * n                       # index into work[i]
    left = [work[i][0] if work[i] else 0.0 for i in range(n)]
    sleeping_until = [None] * n
    started = [0.0] * n
    done = [math.inf] * n
    for i in range(n):
        if not work[i]:
            done[i] = 0.0
    now = 0.0
    while True:
        finished = [i for i in range(n) if done[i] < math.inf]
        if stop_after is not None and len(finished) >= stop_after or len(finished) == n:
            return done
        active = [i for i in range(n) if done[i] == math.inf and sleeping_until[i] is None]
        if cores is None or not active:
            rate = 1.0
        else:
            rate = 1.0 / cores(len(active)) if callable(cores) else min(1.0, cores / len(active))
        events = [left[i] / rate for i in active] + \
                 [sleeping_until[i] - now for i in range(n) if sleeping_until[i] is not None]
        dt = max(0.0, min(events))
        now += dt
        for i in active:
            left[i] -= dt * rate
        for i in range(n):
            if done[i] < math.inf:
                continue
            if sleeping_until[i] is not None and sleeping_until[i] <= now + 1e-15:
                sleeping_until[i] = None
                _next_phase(i, work, phase, left, started, done, now)
            elif sleeping_until[i] is None and left[i] <= 1e-15:
                wall = now - started[i]
                if factors[i] > 1:
                    sleeping_until[i] = now + (factors[i] - 1) * wall
                else:
                    _next_phase(i, work, phase, left, started, done, now)


def _next_phase(i, work, phase, left, started, done, now):
    phase[i] += 1
    if phase[i] >= len(work[i]):
        done[i] = now
    else:
        left[i] = work[i][phase[i]]
        started[i] = now


def micro_batches(n_seq: int, micro_batch_size: int) -> list:
    """Sizes of the micro-batches of a share of n_seq sequences."""
    return [min(micro_batch_size, n_seq - i) for i in range(0, n_seq, micro_batch_size)]


def policy_compute_time(policy: str, n_workers: int, global_batch: int, micro_batch_size: int,
                        seconds_per_seq: float, factors: list, cores: float | None, backup: int = 1,
                        iterations: int = 12) -> dict:
    """Compute phase of one step under a policy: compute_s, seconds until the step's gradients are ready (the
    slowest rank it waits for), and mean_compute_s, the mean rank's own compute (a slowed rank's sleep
    included, as the runtime times it; a rank abandoned by backup workers counted until the step moves on)."""
    def run(shares, stop_after=None):
        work = [[b * seconds_per_seq for b in micro_batches(n, micro_batch_size)] for n in shares]
        return rank_finish_times(work, factors, cores, stop_after)

    def mean_until(t, end):
        return sum(min(ti, end) for ti in t) / len(t)

    equal = [global_batch // n_workers] * n_workers
    if policy == "none":
        t = run(equal)
        return {"compute_s": max(t), "mean_compute_s": mean_until(t, max(t)), "shares": equal,
                "sequences_used": global_batch}
    if policy == "backup_workers":
        t = run(equal, stop_after=n_workers - backup)
        used = sorted(t)[n_workers - backup - 1]
        return {"compute_s": used, "mean_compute_s": mean_until(t, used), "shares": equal,
                "sequences_used": global_batch * (n_workers - backup) // n_workers}
    if policy == "dynamic_batch":
        speeds, shares, history = [1.0] * n_workers, equal, []
        for _ in range(iterations):                 # the runtime: EMA 0.5 of measured sequences per second
            shares = split_sizes(global_batch, speeds)
            t = run(shares)
            history.append((max(t), mean_until(t, max(t))))
            speeds = [0.5 * s + 0.5 * (n / ti if n and ti > 0 else s) for s, n, ti in zip(speeds, shares, t)]
        steady = history[len(history) // 2:]
        return {"compute_s": sum(h[0] for h in steady) / len(steady),
                "mean_compute_s": sum(h[1] for h in steady) / len(steady), "shares": shares,
                "sequences_used": global_batch}
    raise ValueError(f"policy must be one of {POLICIES}, got {policy}")


def cores_of(hw) -> float | None:
    """Cores the ranks share on `cpu` (this machine), None on GPUs (one device per rank)."""
    if hw.name != "cpu":
        return None
    return float(os.environ.get("LLAMA_COURSE_CORES", os.cpu_count() or 1))


def predict(ctx_or_cfg, policy: str | None = None) -> dict:
    """Step time of a config's data-parallel layout under `policy` (default: the config's), from the
    simulator's per-sequence compute and all-reduce times."""
    ctx = _context(ctx_or_cfg) if not hasattr(ctx_or_cfg, "step") else ctx_or_cfg
    cfg = ctx.cfg
    p = cfg.parallel
    policy = policy or cfg.load_balance.policy
    per_micro = sum(f.compute + b.compute + b.recompute for f, b in zip(ctx.step.forward, ctx.step.backward))
    # a micro-batch run alone: the core sharing is played out event by event below, not averaged in, and
    # the straggle after it
    per_seq = per_micro / p.micro_batch_size / ctx.hw.compute_slowdown * ctx.hw.speed_factor
    factors = [float(cfg.faults.slow.get(r, 1.0)) for r in range(p.dp)]
    out = policy_compute_time(policy if policy != "balanced_stages" else "none", p.dp, p.global_batch_size,
                              p.micro_batch_size, per_seq, factors,
                              ctx.hw.sharing_slowdown if cores_of(ctx.hw) else None,
                              cfg.load_balance.backup_workers)
    if cores_of(ctx.hw):
        # fair sharing decides the order above; the scheduler is not fair at this time scale, and a step that
        # waits for k ranks waits for the slowest of them, `straggle` behind (backup workers wait for dp - b)
        waits_for = p.dp - cfg.load_balance.backup_workers if policy == "backup_workers" else p.dp
        straggle = ctx.hw.straggle_factor(waits_for)
        out["compute_s"] *= straggle
        out["mean_compute_s"] *= straggle

    psi = sum(virtual_stage_params(cfg, ctx.step.layers))
    out["all_reduce_s"] = ctx.comm.time("all_reduce", ctx.layout.dp_group(), psi * 4.0)
    out["optimizer_s"] = ctx.breakdown["optimizer"]
    out["step_scalars_s"] = ctx.step.comm.get("step_scalars", 0.0)      # loss all-reduce
    out["step_time_s"] = out["compute_s"] + out["all_reduce_s"] + out["step_scalars_s"] + out["optimizer_s"]
    return out


def _context(cfg):
    """The simulator's Context of a config's step, as simulate() builds it before calling extensions."""
    cfg = cfg if isinstance(cfg, Config) else load_config(cfg)
    hw = hardware_for(cfg)
    comm = CommModel(Cluster(hw, cfg.cluster.num_gpus))
    step = simulate_step(cfg, hw, comm)
    return Context(cfg, hw, comm, Layout.of(cfg), step, dict(step.breakdown))


def contribute(ctx) -> None:
    """simulate() hook: the data-parallel step under the config's policy (and, on cpu, shared cores)."""
    cfg = ctx.cfg
    p = cfg.parallel
    if p.strategy != "collective" or p.tp > 1 or p.pp > 1 or p.dp < 2:
        return
    if cfg.load_balance.policy == "none" and cores_of(ctx.hw) is None:
        return                                    # the core simulator already times a GPU straggler
    out = predict(ctx)
    # on cpu a component is read as the mean rank spends it (simulate.py, as `compare` averages the runtime's
    # ranks): its own compute, then a wait for the slowest rank in the all-reduce; the step time is the same
    compute = out["mean_compute_s"] if cores_of(ctx.hw) else out["compute_s"]
    ctx.breakdown.update({"compute": compute, "recompute": 0.0, "bubble": 0.0, "optimizer": out["optimizer_s"],
                          "exposed_comm": out["all_reduce_s"] + out["step_scalars_s"] + out["compute_s"] - compute})
    ctx.extra["load_balancing"] = {k: out[k] for k in ("shares", "sequences_used", "compute_s", "all_reduce_s")}
    ctx.extra["load_balancing"]["rank_wait_s"] = out["compute_s"] - compute     # the mean rank's, in exposed_comm


# ---------------------------------------------------------------------------------------------
# dispatch policies for a request stream
# ---------------------------------------------------------------------------------------------

def dispatch(policy: str, speeds, load: float = 0.8, n_requests: int = 20000, seed: int = 0) -> dict:
    """Mean and p99 latency of a request stream sent to servers of `speeds` (work per second) by
    round_robin | weighted_round_robin | least_loaded. `load` = arrival rate x mean work / sum(speeds)."""
    rng = random.Random(seed)
    rate = load * sum(speeds)                  # mean work 1 per request
    free_at = [0.0] * len(speeds)               # each server is FIFO: when its queue drains
    weights = [s / sum(speeds) for s in speeds]
    credit = [0.0] * len(speeds)
    t, latencies = 0.0, []
    for k in range(n_requests):
        t += rng.expovariate(rate)
        work = rng.expovariate(1.0)
        if policy == "round_robin":
            j = k % len(speeds)
        elif policy == "weighted_round_robin":          # smooth WRR (nginx): highest accumulated credit
            credit = [c + w for c, w in zip(credit, weights)]
            j = max(range(len(speeds)), key=lambda i: credit[i])
            credit[j] -= 1.0
        elif policy == "least_loaded":                  # least outstanding work, in seconds
            j = min(range(len(speeds)), key=lambda i: max(free_at[i], t) + work / speeds[i])
        else:
            raise ValueError(f"unknown dispatch policy {policy}")
        start = max(free_at[j], t)
        free_at[j] = start + work / speeds[j]
        latencies.append(free_at[j] - t)
    latencies.sort()
    return {"policy": policy, "mean_s": sum(latencies) / len(latencies),
            "p99_s": latencies[int(0.99 * len(latencies))]}


def dispatch_table(speeds=(1.0, 1.0, 1.0, 1 / 3), loads=(0.5, 0.8)) -> str:
    """Markdown: mean / p99 latency of each dispatch policy at a few loads."""
    lines = ["| load | policy | mean latency | p99 latency |", "|---:|---|---:|---:|"]
    for load in loads:
        for policy in ("round_robin", "weighted_round_robin", "least_loaded"):
            r = dispatch(policy, speeds, load)
            lines.append(f"| {load} | {policy} | {r['mean_s']:.2f} | {r['p99_s']:.2f} |")
    return "\n".join(lines)
