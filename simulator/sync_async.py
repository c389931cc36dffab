"""Synchronous and asynchronous updates (cost model): throughput and staleness under BSP, ASP and SSP.

N workers with per-gradient times c_i push to a parameter server that applies one update at a time
(service time u each, a FIFO queue: a SimPy Resource). A push computed on version v and applied when the
server is at version V has staleness V - v.

    bsp   all wait, then N updates' worth of one aggregated step:  T_step = max_i c_i + T_comm
    asp   worker i loops compute -> push -> pull, never waits:       updates/s ~ sum_i 1 / (c_i + u)
          staleness ~ the pushes the others made during c_i: a fast worker sees about sum_{j!=i} c_i/c_j,
          a straggler f times slower sees f times more (its gradients are the stalest)
    ssp   ASP, but worker i waits while its clock is more than s ahead of the slowest worker's:
          the straggler's staleness is capped near (s + 1)(N - 1); the fast workers idle instead

`staleness_distribution` simulates it and returns the histogram, throughput and waiting time, so the
tradeoff can be read off for any speeds: BSP wastes (max c - c_i) per worker per step, ASP wastes nothing
but pays in staleness, SSP interpolates. Local SGD (sync local_sgd) keeps BSP's barrier but all-reduces
once per H = local_steps steps: exposed communication / H.

Seed questions: 4 (sync vs async), 10 / 25 (consistency, staleness), 16 (stragglers).

    llama-course simulate configs/tiny.yaml --set parallel.strategy=parameter_server --set parallel.sync=asp \\
        --set cluster.num_gpus=4 --set 'faults.slow={3: 3}' --json     # see "sync_async"
"""

from __future__ import annotations

import simpy


def staleness_distribution(compute_s, sync: str = "asp", staleness: int = 0, update_s: float = 0.0,
                           comm_s: float = 0.0, updates: int = 2000) -> dict:
    """Simulate workers with per-gradient times `compute_s` until the server applied `updates` pushes.

    Returns histogram {staleness: pushes}, mean / max staleness, updates per second, and the share of
    time workers spent blocked (SSP; BSP's waiting is max(c) - c_i)."""
    n = len(compute_s)
    if sync == "bsp":
        step = max(compute_s) + comm_s + update_s
        return {"histogram": {0: updates}, "mean": 0.0, "max": 0, "updates_per_s": 1 / step,
                "pushes_per_s": n / step, "blocked_share": 1 - sum(compute_s) / (n * max(compute_s))}
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    state = {"version": 0}
    clocks = [0] * n
    hist: dict = {}
    blocked = [0.0] * n
    changed = [env.event()]
    bound = staleness if sync == "ssp" else None

    def worker(i):
        while state["version"] < updates:
            if bound is not None:
                while clocks[i] - min(clocks) > bound:
                    t0 = env.now
                    yield changed[0]
                    blocked[i] += env.now - t0
            v = state["version"]
            yield env.timeout(compute_s[i] + comm_s)
            with server.request() as req:
                yield req
                yield env.timeout(update_s)
                s = state["version"] - v
                hist[s] = hist.get(s, 0) + 1
                state["version"] += 1
            clocks[i] += 1
            ev, changed[0] = changed[0], env.event()
            ev.succeed()

    for i in range(n):
        env.process(worker(i))
    env.run()              # ends when every worker has left its loop (SSP waiters simply never resume)
    total = sum(hist.values())
    return {"histogram": dict(sorted(hist.items())), "mean": sum(s * c for s, c in hist.items()) / total,
            "max": max(hist), "updates_per_s": total / env.now, "pushes_per_s": total / env.now,
            "blocked_share": sum(blocked) / (n * env.now)}


def asp_staleness(compute_s) -> list:
    """Closed form: each worker's mean staleness under ASP in steady state (a fast server). While worker i
    computes one gradient (c_i seconds) the others apply sum_{j != i} c_i / c_j updates: N - 1 for equal
    workers, and a straggler f times slower sees f times more. (Lab 08 holds measured runs to it.)"""
    rates = [1 / c for c in compute_s]
    return [c * (sum(rates) - r) for c, r in zip(compute_s, rates)]


def contribute(ctx) -> None:
    """simulate() hook: local SGD divides the exposed all-reduce by local_steps; ASP/SSP on a parameter
    server report staleness and the time per G sequences (N pushes of G/N sequences)."""
    cfg = ctx.cfg
    p = cfg.parallel
    if p.sync == "local_sgd":
        ctx.breakdown["exposed_comm"] -= ctx.step.comm["dp_exposed"] * (1 - 1 / p.local_steps)
        return
    if p.sync not in ("asp", "ssp") or p.strategy != "parameter_server":
        return
    ps = ctx.extra.get("parameter_server", {})
    comm = ps.get("push_s", 0.0) + ps.get("pull_s", 0.0)
    per_push_comm = comm / max(p.dp, 1)        # the server link's time for one worker's push and pull
    base = cfg.grad_accum_steps * sum(f.compute + b.compute + b.recompute     # one worker, unslowed
                                      for f, b in zip(ctx.step.forward, ctx.step.backward))
    factors = [float(cfg.faults.slow.get(r, 1.0)) for r in range(p.dp)]
    sim = staleness_distribution([base * f for f in factors], p.sync, p.staleness,
                                 update_s=per_push_comm + ctx.breakdown["optimizer"], comm_s=0.0,
                                 updates=200 * p.dp)
    step = p.dp / sim["pushes_per_s"]          # G sequences = N pushes
    scale = step / sum(ctx.breakdown.values())
    for k in ctx.breakdown:
        ctx.breakdown[k] *= scale
    ctx.extra["sync_async"] = {k: sim[k] for k in ("mean", "max", "blocked_share", "histogram")}
