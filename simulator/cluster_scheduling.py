"""Cluster scheduling: which training job gets the GPUs of a shared cluster, and when.

A cluster of G GPUs runs a stream of training jobs; job j arrives at a_j, needs g_j GPUs at once (gang
scheduling: a data-parallel job cannot start on part of its GPUs) and runs d_j seconds. The scheduler
orders the waiting jobs by a policy and starts them while they fit:

    fifo       arrival order                         fair in order, but a big job at the head blocks all
    sjf        shortest job first (d_j)              minimises mean completion time on one resource with
                                                     all jobs present (Smith's rule); can starve long jobs
    srtf       shortest remaining time first, preemptive: a shorter arrival evicts the longest running
               jobs; the evicted job pays preempt_s (write a checkpoint, later reload it) on its remaining work
    priority   highest priority first (then arrival)

Backfilling (EASY): when the head of the queue does not fit, it gets a reservation at the earliest time
enough GPUs free up (the "shadow time"); a later job may start now only if it fits and either ends before
the shadow time or uses GPUs the head will not need. The head is never delayed; idle GPUs are filled.

Metrics: job completion time JCT_j = finish_j - a_j (mean, p50, p95, p99), makespan, utilisation
(GPU-seconds busy / (G x makespan)), and Jain's fairness index over each job's speed d_j / JCT_j:
J = (sum x)^2 / (n sum x^2), 1 when every job is slowed down equally.

Seed questions 16 (resource scheduling of training jobs), 19 (job queues), 30. Run it:

    python -m simulator.cluster_scheduling --policy sjf --jobs 200
    python -m simulator.cluster_scheduling --policy all --jobs 500 --gpus 64 --backfill
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field

import simpy

from simulator.cli_args import Parser

POLICIES = ("fifo", "sjf", "srtf", "priority")

# Workload distributions (stated assumptions, shaped like published shared-cluster traces, e.g. Microsoft's
# Philly, Jeon et al. ATC 2019: most jobs use one GPU, few use many; lengths are heavy-tailed).
SIZE_CHOICES = (1, 2, 4, 8, 16, 32, 64)
SIZE_WEIGHTS = (0.45, 0.15, 0.15, 0.15, 0.05, 0.03, 0.02)
LENGTH_MEDIAN_S = 3600.0          # lognormal job length: median 1 hour ...
LENGTH_SIGMA = 1.5                # ... and log-standard deviation 1.5 (mean ~3 h, p99 ~33 h) ...
LENGTH_LIMIT_S = 72 * 3600.0      # ... cut at a 72-hour wall-time limit, as clusters impose one


@dataclass
class Job:
    id: int
    arrival_s: float
    gpus: int
    duration_s: float
    priority: int = 0
    # filled in by the simulation
    start_s: float | None = None
    finish_s: float | None = None
    remaining_s: float = field(default=0.0, repr=False)
    preemptions: int = 0

    @property
    def jct_s(self) -> float:
        return self.finish_s - self.arrival_s


def workload(n_jobs: int, cluster_gpus: int, load: float = 0.9, seed: int = 0, max_gpus: int | None = None) -> list:
    """n_jobs jobs: sizes from SIZE_WEIGHTS (capped at the cluster), lengths lognormal (LENGTH_*, cut), priorities
    0-2 uniform, Poisson arrivals at the rate that asks for `load` x the cluster's GPU-seconds on average."""
    rng = random.Random(seed)
    cap = min(max_gpus or cluster_gpus, cluster_gpus)
    sizes = [s for s in SIZE_CHOICES if s <= cap]
    weights = SIZE_WEIGHTS[:len(sizes)]
    jobs = []
    for i in range(n_jobs):
        g = rng.choices(sizes, weights)[0]
        d = min(LENGTH_MEDIAN_S * math.exp(rng.gauss(0, LENGTH_SIGMA)), LENGTH_LIMIT_S)
        jobs.append(Job(i, 0.0, g, d, priority=rng.randrange(3)))
    mean_work = sum(j.gpus * j.duration_s for j in jobs) / n_jobs
    rate = load * cluster_gpus / mean_work            # jobs per second
    t = 0.0
    for j in jobs:
        t += rng.expovariate(rate)
        j.arrival_s = t
    return jobs


@dataclass
class Result:
    policy: str
    backfill: bool
    jobs: list
    usage: list          # (time, GPUs in use) after every change
    gpus: int

    def metrics(self) -> dict:
        jct = sorted(j.jct_s for j in self.jobs)
        start = min(j.arrival_s for j in self.jobs)
        makespan = max(j.finish_s for j in self.jobs) - start
        busy = sum(j.gpus * j.duration_s for j in self.jobs)
        speed = [j.duration_s / j.jct_s for j in self.jobs]
        return {"policy": self.policy, "backfill": self.backfill, "jobs": len(jct),
                "mean_jct_s": sum(jct) / len(jct), "p50_jct_s": _quantile(jct, 0.5), "p95_jct_s": _quantile(jct, 0.95),
                "p99_jct_s": _quantile(jct, 0.99), "makespan_s": makespan,
                "utilisation": busy / (self.gpus * makespan) if makespan else 0.0,
                "jain_fairness": jain_index(speed), "preemptions": sum(j.preemptions for j in self.jobs)}


def jain_index(xs) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one gets everything."""
    xs = list(xs)
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs else 1.0


def _quantile(sorted_xs, q):
    i = min(len(sorted_xs) - 1, max(0, math.ceil(q * len(sorted_xs)) - 1))
    return sorted_xs[i]


def _key(policy: str):
    return {"fifo": lambda j: (j.arrival_s, j.id),
            "sjf": lambda j: (j.duration_s, j.arrival_s, j.id),
            "srtf": lambda j: (j.remaining_s, j.arrival_s, j.id),
            "priority": lambda j: (-j.priority, j.arrival_s, j.id)}[policy]


def schedule(jobs, gpus: int, policy: str = "fifo", backfill: bool = False, preempt_s: float = 0.0) -> Result:
    """Simulate the cluster (SimPy) until every job has finished; jobs are copied, not changed."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    jobs = [Job(j.id, j.arrival_s, j.gpus, j.duration_s, j.priority) for j in jobs]
    for j in jobs:
        if not 0 < j.gpus <= gpus:
            raise ValueError(f"job {j.id} needs {j.gpus} GPUs; the cluster has {gpus}")
        j.remaining_s = j.duration_s
    env = simpy.Environment()
    key = _key(policy)
    waiting, running = [], {}                     # running: job id -> (job, process, started at)
    state = {"free": gpus}
    usage = [(0.0, 0)]
    wake = [env.event()]

    def poke():
        if not wake[0].triggered:
            wake[0].succeed()

    def run(job):
        started = env.now
        try:
            yield env.timeout(job.remaining_s)
            job.remaining_s = 0.0
            job.finish_s = env.now
        except simpy.Interrupt:                   # preempted: checkpoint now, pay to reload later
            job.remaining_s -= env.now - started
            job.remaining_s += preempt_s
            job.preemptions += 1
            waiting.append(job)
        del running[job.id]
        state["free"] += job.gpus
        usage.append((env.now, gpus - state["free"]))
        poke()

    def start(job):
        state["free"] -= job.gpus
        if job.start_s is None:
            job.start_s = env.now
        running[job.id] = (job, env.process(run(job)), env.now)
        usage.append((env.now, gpus - state["free"]))

    def decide():
        waiting.sort(key=key)
        if policy == "srtf":                      # preemptive: the best set by remaining time, greedily
            left = {j.id: j.remaining_s for j in waiting}
            left.update({job.id: job.remaining_s - (env.now - started) for job, _, started in running.values()})
            pool = sorted([j for j, _, _ in running.values()] + waiting, key=lambda j: (left[j.id], j.arrival_s, j.id))
            chosen, room = set(), gpus
            for j in pool:
                if j.gpus <= room:
                    chosen.add(j.id)
                    room -= j.gpus
                elif not backfill:
                    break
            for job, proc, _ in list(running.values()):
                if job.id not in chosen and proc.is_alive:
                    proc.interrupt("preempted")
            # evicted jobs free their GPUs in their own process; start the chosen ones that fit now
            for j in list(waiting):
                if j.id in chosen and j.gpus <= state["free"]:
                    waiting.remove(j)
                    start(j)
            return
        head_blocked = None
        for j in list(waiting):
            if j.gpus <= state["free"] and head_blocked is None:
                waiting.remove(j)
                start(j)
            elif head_blocked is None:
                if not backfill:
                    return
                head_blocked = _reservation(j, running, state["free"], env.now)
            elif j.gpus <= state["free"]:
                shadow, extra = head_blocked
                if env.now + j.remaining_s <= shadow or j.gpus <= extra:
                    waiting.remove(j)
                    start(j)
                    if env.now + j.remaining_s > shadow:
                        head_blocked = (shadow, extra - j.gpus)

    def scheduler():
        pending = sorted(jobs, key=lambda j: (j.arrival_s, j.id))
        i = 0
        while i < len(pending) or waiting or running:
            while i < len(pending) and pending[i].arrival_s <= env.now:
                waiting.append(pending[i])
                i += 1
            decide()
            wake[0] = env.event()
            events = [wake[0]]
            if i < len(pending):
                events.append(env.timeout(pending[i].arrival_s - env.now))
            if not events:
                break
            yield simpy.AnyOf(env, events)
            yield env.timeout(0)                  # let every process finishing at this instant report first

    env.process(scheduler())
    env.run()
    return Result(policy, backfill, jobs, usage, gpus)


def _reservation(head: Job, running: dict, free: int, now: float) -> tuple:
    """EASY backfilling: (shadow time when the head fits, GPUs left over for backfill jobs past it)."""
    ends = sorted((started + job.remaining_s, job.gpus) for job, _, started in running.values())
    avail = free
    for end, g in ends:
        avail += g
        if avail >= head.gpus:
            return end, avail - head.gpus
    return now, 0


def compare(jobs, gpus: int, policies=POLICIES, backfill: bool = False, preempt_s: float = 60.0) -> list:
    """metrics() of each policy on the same jobs."""
    return [schedule(jobs, gpus, p, backfill, preempt_s).metrics() for p in policies]


def plot_jct_cdf(results, out_path: str | None = None, title: str | None = None):
    """CDF of job completion time for several Result objects (labs); returns the matplotlib Figure."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        jct = sorted(j.jct_s / 3600 for j in r.jobs)
        ax.plot(jct, [(i + 1) / len(jct) for i in range(len(jct))],
                label=f"{r.policy}{' + backfill' if r.backfill else ''}")
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (hours)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(title or "job completion time by policy")
    ax.legend()
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def main(argv=None) -> int:
    ap = Parser(prog="python -m simulator.cluster_scheduling",
                description="simulate a shared GPU cluster running training jobs")
    ap.add_argument("--policy", default="all", choices=POLICIES + ("all",))
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--load", type=float, default=0.9, help="offered load (share of the cluster's GPU-seconds)")
    ap.add_argument("--backfill", action="store_true")
    ap.add_argument("--preempt-s", type=float, default=60.0, help="srtf: checkpoint + reload cost per preemption")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.gpus < 1 or args.load <= 0:
        print("error: --jobs, --gpus and --load must be positive", file=sys.stderr)
        return 2
    jobs = workload(args.jobs, args.gpus, args.load, args.seed)
    rows = compare(jobs, args.gpus, POLICIES if args.policy == "all" else (args.policy,), args.backfill, args.preempt_s)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{args.jobs} jobs on {args.gpus} GPUs, load {args.load}, backfill {args.backfill}, seed {args.seed}")
    print("| policy | mean JCT h | p95 JCT h | p99 JCT h | makespan h | utilisation | Jain | preemptions |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['mean_jct_s'] / 3600:.2f} | {r['p95_jct_s'] / 3600:.2f} | {r['p99_jct_s'] / 3600:.2f} "
              f"| {r['makespan_s'] / 3600:.1f} | {r['utilisation']:.1%} | {r['jain_fairness']:.3f} | {r['preemptions']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
