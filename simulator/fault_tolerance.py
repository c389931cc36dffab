"""Fault tolerance at scale: failures, checkpoints, restarts, and what they cost (goodput).

A synchronous training job stops whenever any of its N GPUs fails. Failures are drawn per GPU: each GPU's
time to failure is exponential with mean MTBF_gpu (or Weibull with shape k, `faults.weibull_shape`: k < 1
infant mortality, k > 1 wear-out), and a failed GPU is replaced by a fresh one. With exponential failures
the job fails every

    M = MTBF_gpu / N                                      (job mean time between failures)

The job writes a checkpoint every tau seconds of work, at a blocking cost C (state bytes / write
bandwidth). After a failure it pays a restart R (detect, replace the node, reload) and redoes the work
since the last complete checkpoint. Goodput is useful training time over wall time. For exponential
failures (failures may also strike during a restart) the expected wall time of one segment of tau work
is exactly (Daly 2006)

    E = M e^(R/M) (e^((tau + C)/M) - 1)           goodput(tau) = tau / E

and to first order the waste is C/tau + tau/(2M) + R/M, minimised at Young's interval

    tau* = sqrt(2 C M)                             (Daly's refinement: sqrt(2 C M) - C)

`simulate_run` plays a whole run as SimPy events (a job process, a failure process that interrupts it)
and `interval_sweep` finds the simulated optimum the formulas predict. Llama 3 405B: 419 unexpected
interruptions in 54 days on 16,384 H100s, a job MTBF of about 3.1 h, yet over 90% effective training time
(../shared/reference/published-results.md); `llama3_check()` reproduces that in magnitude.

Seed questions 12 and 18. Run it:

    llama-course simulate configs/llama3-405b-h100.yaml --set faults.gpu_mtbf_hours=50790
    python -m simulator.fault_tolerance               # the Llama 3 check and an interval sweep
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import simpy

from simulator.workload import count_params, state_bytes_per_param

HOUR = 3600.0
DEFAULT_WRITE_GBPS = 2.0
"""Checkpoint write bandwidth per node to the shared file system when `checkpoint.write_GBps` is unset,
GB/s. An assumption (a parallel file system client sustains a few GB/s per node), not a measurement."""
DEFAULT_RESTART_S = 600.0


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------

def job_mtbf_s(gpu_mtbf_hours: float, n_gpus: int) -> float:
    """Mean time between failures of a job on n_gpus GPUs (exponential failures), seconds."""
    return gpu_mtbf_hours * HOUR / n_gpus


def gpu_mtbf_for_job(job_mtbf_hours: float, n_gpus: int) -> float:
    """Per-GPU MTBF (hours) that gives a job of n_gpus GPUs the job MTBF job_mtbf_hours."""
    return job_mtbf_hours * n_gpus


def young_interval(checkpoint_s: float, mtbf_s: float) -> float:
    """Young's checkpoint interval sqrt(2 C M), seconds of work between checkpoints."""
    return math.sqrt(2 * checkpoint_s * mtbf_s)


def daly_interval(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly's first-order refinement sqrt(2 C M) - C (for C < M / 2), else M."""
    if checkpoint_s >= mtbf_s / 2:
        return mtbf_s
    return young_interval(checkpoint_s, mtbf_s) - checkpoint_s


def expected_goodput(interval_s: float, checkpoint_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """Exact expected goodput for exponential failures: tau / (M e^(R/M) (e^((tau+C)/M) - 1))."""
    m = mtbf_s
    segment = m * math.exp(restart_s / m) * math.expm1((interval_s + checkpoint_s) / m)
    return interval_s / segment


def optimal_interval(checkpoint_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """The interval maximising expected_goodput (golden-section search on log tau; the function is unimodal)."""
    lo, hi = math.log(1e-3 * mtbf_s + 1e-9), math.log(10 * mtbf_s)
    f = lambda x: -expected_goodput(math.exp(x), checkpoint_s, mtbf_s, restart_s)  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(100):
        if f(a) < f(b):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return math.exp((lo + hi) / 2)


# ---------------------------------------------------------------------------------------------
# the simulated run
# ---------------------------------------------------------------------------------------------

@dataclass
class RunStats:
    """Where the wall time of one simulated run went (seconds)."""

    wall_s: float
    useful_s: float
    checkpoint_s: float
    lost_s: float
    restart_s: float
    failures: int

    @property
    def goodput(self) -> float:
        return self.useful_s / self.wall_s if self.wall_s else 1.0


def draw_time_to_failure(rng: random.Random, gpu_mtbf_s: float, weibull_shape: float | None = None) -> float:
    """One GPU's time to failure: exponential with mean gpu_mtbf_s, or Weibull with that mean and shape k."""
    if weibull_shape is None:
        return rng.expovariate(1.0 / gpu_mtbf_s)
    scale = gpu_mtbf_s / math.gamma(1 + 1 / weibull_shape)
    return rng.weibullvariate(scale, weibull_shape)


def simulate_run(work_s: float, interval_s: float, checkpoint_s: float, restart_s: float, gpu_mtbf_s: float,
                 n_gpus: int, weibull_shape: float | None = None, seed: int = 0) -> RunStats:
    """Play a run of work_s seconds of training as SimPy events; failures drawn per GPU.

    The job works interval_s, then writes a checkpoint for checkpoint_s (blocking); a failure interrupts
    whatever it is doing (work, checkpoint or restart): the work since the last complete checkpoint is lost
    and a restart of restart_s begins. Each GPU keeps its own failure clock; the failed one is replaced by
    a new GPU with a fresh draw (for Weibull, the others keep ageing).
    """
    if interval_s <= 0 or work_s <= 0:
        raise ValueError("interval_s and work_s must be positive")
    rng = random.Random(seed)
    env = simpy.Environment()
    stats = RunStats(0.0, 0.0, 0.0, 0.0, 0.0, 0)

    def job():
        done = 0.0
        while done < work_s:
            segment = min(interval_s, work_s - done)
            start = env.now
            try:
                yield env.timeout(segment)
                if done + segment < work_s:          # no checkpoint after the last segment: the run is over
                    yield env.timeout(checkpoint_s)
                    stats.checkpoint_s += checkpoint_s
                done += segment
            except simpy.Interrupt:
                stats.lost_s += env.now - start
                yield from restart()

    def restart():
        while True:
            start = env.now
            try:
                yield env.timeout(restart_s)
                stats.restart_s += restart_s
                return
            except simpy.Interrupt:                  # failed again while restarting
                stats.restart_s += env.now - start

    def failures(proc):
        clocks = [draw_time_to_failure(rng, gpu_mtbf_s, weibull_shape) for _ in range(n_gpus)]
        heapq.heapify(clocks)
        while True:
            t = heapq.heappop(clocks)
            yield env.timeout(t - env.now)
            if not proc.is_alive:
                return
            stats.failures += 1
            proc.interrupt("gpu failure")
            heapq.heappush(clocks, env.now + draw_time_to_failure(rng, gpu_mtbf_s, weibull_shape))

    proc = env.process(job())
    env.process(failures(proc))
    env.run(until=proc)
    stats.wall_s = env.now
    stats.useful_s = work_s
    return stats


def interval_sweep(intervals, work_s: float, checkpoint_s: float, restart_s: float, gpu_mtbf_s: float,
                   n_gpus: int, weibull_shape: float | None = None, seeds: int = 4) -> list:
    """[(interval_s, mean simulated goodput over `seeds` runs)] for each interval (common random numbers)."""
    out = []
    for tau in intervals:
        runs = [simulate_run(work_s, tau, checkpoint_s, restart_s, gpu_mtbf_s, n_gpus, weibull_shape, seed=s)
                for s in range(seeds)]
        out.append((tau, sum(r.useful_s for r in runs) / sum(r.wall_s for r in runs)))
    return out


# ---------------------------------------------------------------------------------------------
# from a config: checkpoint cost and the simulate() extension
# ---------------------------------------------------------------------------------------------

def checkpoint_bytes(cfg) -> float:
    """Bytes of one checkpoint: every parameter and optimizer state once (replicas write nothing extra)."""
    per = state_bytes_per_param(cfg.training.precision, cfg.training.optimizer)
    return count_params(cfg.model, cfg.seq_len) * (per["params"] + per["optimizer"])


def checkpoint_write_s(cfg, gpus_per_node: int | None = None) -> float:
    """Blocking seconds of one sharded checkpoint: bytes spread over every node, each writing write_GBps."""
    per_node = gpus_per_node or cfg.cluster.gpus_per_node or 8
    nodes = max(1, math.ceil(cfg.cluster.num_gpus / per_node))
    gbps = cfg.checkpoint.write_GBps or DEFAULT_WRITE_GBPS
    return checkpoint_bytes(cfg) / (nodes * gbps * 1e9)


def run_summary(cfg, step_time_s: float, gpus_per_node: int | None = None) -> dict:
    """Expected goodput and time to train with failures for a config whose step takes step_time_s."""
    f, ck = cfg.faults, cfg.checkpoint
    write_s = checkpoint_write_s(cfg, gpus_per_node)
    # async: only the copy to host memory blocks training; take it as a tenth of the write (an assumption)
    blocking_s = write_s / 10 if ck.async_save else write_s
    out = {"checkpoint_bytes": checkpoint_bytes(cfg), "checkpoint_write_s": write_s,
           "checkpoint_blocking_s": blocking_s}
    if f.gpu_mtbf_hours is None:
        if ck.every_steps:
            interval = ck.every_steps * step_time_s
            out["checkpoint_interval_s"] = interval
            out["checkpoint_overhead"] = blocking_s / (interval + blocking_s)
        return out
    m = job_mtbf_s(f.gpu_mtbf_hours, cfg.cluster.num_gpus)
    interval = ck.every_steps * step_time_s if ck.every_steps else max(young_interval(blocking_s, m), step_time_s)
    goodput = expected_goodput(interval, blocking_s, m, f.restart_s)
    out.update({"job_mtbf_s": m, "young_interval_s": young_interval(blocking_s, m),
                "checkpoint_interval_s": interval, "expected_goodput": goodput})
    if cfg.training.total_tokens:
        useful = cfg.training.total_tokens / (cfg.tokens_per_step / step_time_s)
        wall = useful / goodput
        out.update({"time_to_train_with_failures_s": wall, "expected_failures": wall / m})
    return out


def contribute(ctx) -> None:
    """simulate() extension: adds a `fault_tolerance` object to the JSON (the step time is unchanged)."""
    step_time = sum(ctx.breakdown.values())
    ctx.extra["fault_tolerance"] = run_summary(ctx.cfg, step_time, ctx.hw.gpus_per_node)
    if "time_to_train_with_failures_s" in ctx.extra["fault_tolerance"]:
        ctx.extra["time_to_train_with_failures_s"] = ctx.extra["fault_tolerance"]["time_to_train_with_failures_s"]
        ctx.extra["expected_goodput"] = ctx.extra["fault_tolerance"]["expected_goodput"]


LLAMA3_CHECKPOINT_S = 405e9 * 14 / (2048 * DEFAULT_WRITE_GBPS * 1e9)
"""Llama 3 405B: 405e9 parameters x 14 bytes (bf16 weights + fp32 master and Adam moments) over 2048 nodes
at DEFAULT_WRITE_GBPS each, about 1.4 s (what checkpoint_write_s gives for configs/llama3-405b-h100.yaml)."""


def llama3_check(days: float = 54, n_gpus: int = 16384, job_mtbf_hours: float = 3.1,
                 checkpoint_s: float = LLAMA3_CHECKPOINT_S, restart_s: float = DEFAULT_RESTART_S,
                 seed: int = 0) -> RunStats:
    """Simulate Llama 3's pre-training failures: about `days` of wall time at Young's interval."""
    m = job_mtbf_hours * HOUR
    tau = young_interval(checkpoint_s, m)
    goodput = expected_goodput(tau, checkpoint_s, m, restart_s)
    return simulate_run(days * 86400 * goodput, tau, checkpoint_s, restart_s,
                        gpu_mtbf_for_job(job_mtbf_hours, n_gpus) * HOUR, n_gpus, seed=seed)


if __name__ == "__main__":
    s = llama3_check()
    print(f"Llama 3-like run: {s.wall_s / 86400:.1f} days, {s.failures} failures, goodput {s.goodput:.1%} "
          f"(checkpoints {s.checkpoint_s / s.wall_s:.1%}, lost work {s.lost_s / s.wall_s:.1%}, "
          f"restarts {s.restart_s / s.wall_s:.1%})")
    m, c, r = 3.1 * HOUR, 60.0, DEFAULT_RESTART_S        # a slower file system: C = 60 s
    print(f"Young {young_interval(c, m):.0f} s, exact optimum {optimal_interval(c, m, r):.0f} s")
    for tau, g in interval_sweep([300, 600, 1200, 2400, 4800], 20 * 86400, c, r,
                                 gpu_mtbf_for_job(3.1, 1024) * HOUR, 1024):
        print(f"  interval {tau:>5.0f} s: simulated goodput {g:.2%}, expected {expected_goodput(tau, c, m, r):.2%}")
