"""Synchronous and asynchronous updates: BSP, ASP, SSP, and local SGD / DiLoCo.

N workers, worker i takes c_i seconds per gradient. What changes is when an update may be applied:

    bsp        all N gradients of version v, then one update          step = max_i c_i + comm; staleness 0
    asp        each push applied on arrival; workers never wait        N updates per sum_i 1/c_i-ish time;
               staleness of a push = server version now - version it was computed on (about N - 1 on average)
    ssp        ASP, but a worker more than s pushes ahead of the slowest waits for it
               (Ho et al. 2013): staleness <= about (s + 1)(N - 1), the fast worker's lead is bounded by s
    local_sgd  each worker takes H = local_steps optimizer steps on its own data, then the N copies are
               averaged (one all-reduce per H steps: H times less communication)
               with an outer optimizer: delta = x_prev - mean_i x_i, Nesterov momentum mu, step eta:
               b <- mu b + delta;  x <- x_prev - eta (delta + mu b)   (eta = 1, mu = 0: plain averaging;
               eta = 0.7, mu = 0.9: DiLoCo, Douillard et al. 2023)

BSP, ASP and SSP run on the parameter server (parameter_server.py, where `Clocks` below gates SSP);
local SGD runs on collectives (`LocalSGDEngine`, engine "local_sgd"). What each costs: BSP pays the
straggler (step = slowest worker); ASP pays in stale gradients (each step uses weights N - 1 updates old,
which slows convergence per update and can diverge at high learning rates); SSP trades between the two;
local SGD pays in drift between the replicas (larger H: cheaper, but the average of H local steps is not
H steps of the average).

Seed questions: 4 (sync vs async), 10 / 25 (staleness and consistency), 16 (stragglers).

    llama-course train configs/tiny.yaml --set parallel.strategy=parameter_server --set parallel.dp=3 \\
        --set parallel.sync=ssp --set parallel.staleness=2 --set 'faults.slow={2: 3}'
    llama-course train configs/tiny.yaml --set parallel.sync=local_sgd --set parallel.local_steps=4 \\
        --set parallel.outer_lr=0.7 --set parallel.outer_momentum=0.9            # DiLoCo
    python -c "from llama_course.coordination.sync_async import experiment; print(experiment(steps=30)[:3])"
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from llama_course.core.distributed import all_reduce_mean
from llama_course.engine import ENGINES, Engine


class Clocks:
    """Pushes per worker, and the bounded-staleness rule: worker w may start its next step while its clock
    is at most `bound` ahead of the slowest unfinished worker (bound None = ASP, never wait)."""

    def __init__(self, workers, bound: int | None):
        self.clock = {w: 0 for w in workers}
        self.bound = bound
        self.done: set = set()

    def tick(self, worker: int) -> None:
        self.clock[worker] += 1

    def finish(self, worker: int) -> None:
        """A worker that finished (or died) no longer holds anyone back."""
        self.done.add(worker)

    def lead(self, worker: int) -> int:
        others = [c for w, c in self.clock.items() if w not in self.done and w != worker]
        return self.clock[worker] - min(others) if others else 0

    def may_proceed(self, worker: int) -> bool:
        return self.bound is None or self.lead(worker) <= self.bound


def staleness_summary(histogram: dict) -> dict:
    """mean, max and 90th percentile of a {staleness: count} histogram."""
    n = sum(histogram.values())
    if not n:
        return {"mean": 0.0, "max": 0, "p90": 0, "pushes": 0}
    seen, p90 = 0, 0
    for s in sorted(histogram):
        seen += histogram[s]
        if seen >= 0.9 * n:
            p90 = s
            break
    return {"mean": sum(s * c for s, c in histogram.items()) / n, "max": max(histogram), "p90": p90, "pushes": n}


class LocalSGDEngine(Engine):
    """Data parallel without per-step gradient sync: local optimizer steps, parameters averaged every
    `local_steps` steps through an outer optimizer (plain averaging, or DiLoCo's Nesterov)."""

    name = "local_sgd"

    def __init__(self, cfg, ctx, model, tracer=None):
        super().__init__(cfg, ctx, model, tracer)
        p = cfg.parallel
        self.every, self.outer_lr, self.mu = p.local_steps, p.outer_lr, p.outer_momentum
        self.params = [q for q in self.base_model.parameters() if q.requires_grad]
        self.anchor = torch.cat([q.detach().flatten() for q in self.params]).clone()   # x_prev (synced)
        self.buffer = torch.zeros_like(self.anchor)
        self.steps = 0

    def loss_group(self):
        return self.ctx.dp_group if self.ctx.dp > 1 else None

    def reduce_gradients(self) -> None:
        """No gradient sync: each replica steps on its own gradient."""

    def train_step(self, micro_batches: list, lr: float) -> dict:
        out = super().train_step(micro_batches, lr)
        self.steps += 1
        if self.steps % self.every == 0:
            with self.tracer.span("all_reduce", "comm"):
                self.outer_step()
        out["grad_norm"] = all_reduce_mean(out["grad_norm"], self.loss_group(), self.ctx.device)
        return out

    @torch.no_grad()
    def outer_step(self) -> None:
        """Average the replicas, then x <- x_prev - eta (delta + mu b) with b <- mu b + delta (Nesterov)."""
        flat = torch.cat([q.detach().flatten() for q in self.params])
        if self.ctx.dp > 1:
            dist.all_reduce(flat, group=self.ctx.dp_group)
            flat /= self.ctx.dp
        delta = self.anchor - flat
        if self.mu:
            self.buffer.mul_(self.mu).add_(delta)
            delta = delta + self.mu * self.buffer
        self.anchor.sub_(self.outer_lr * delta)
        offset = 0
        for q in self.params:
            q.copy_(self.anchor[offset: offset + q.numel()].view_as(q))
            offset += q.numel()

    # ---- checkpoint state: the replicas differ between averages, and so do their inner optimizers ----
    def state_dict(self) -> dict:
        """This replica's weights and inner optimizer, plus the outer state every replica holds: the anchor
        x_prev, the outer (Nesterov) momentum and the step counter that decides when the next average comes."""
        return {**super().state_dict(), "anchor": self.anchor.clone(), "outer_momentum": self.buffer.clone(),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.anchor.copy_(state["anchor"])
        self.buffer.copy_(state["outer_momentum"])
        self.steps = int(state["steps"])

    def checkpoint_writer(self) -> bool:
        """Every rank writes: between averages (and always for the inner optimizer) no two replicas agree."""
        return True

    def checkpoint_source_rank(self) -> int:
        return self.ctx.rank


ENGINES["local_sgd"] = LocalSGDEngine


# ---------------------------------------------------------------------------------------------
# the lab experiment
# ---------------------------------------------------------------------------------------------

MODES = {
    "bsp (all-reduce)": ["parallel.strategy=collective", "parallel.sync=bsp"],
    "bsp (parameter server)": ["parallel.strategy=parameter_server", "parallel.sync=bsp"],
    "asp": ["parallel.strategy=parameter_server", "parallel.sync=asp"],
    "ssp (s=1)": ["parallel.strategy=parameter_server", "parallel.sync=ssp", "parallel.staleness=1"],
    "local_sgd (H=4)": ["parallel.strategy=collective", "parallel.sync=local_sgd", "parallel.local_steps=4"],
    "diloco (H=4)": ["parallel.strategy=collective", "parallel.sync=local_sgd", "parallel.local_steps=4",
                     "parallel.outer_lr=0.7", "parallel.outer_momentum=0.9"],
}


def experiment(steps: int = 40, workers: int = 3, straggler: float | None = 3.0, modes=None,
               config: str | None = None, overrides=()) -> list:
    """Train the tiny model under each sync mode, without and with one straggler (the last worker
    `straggler` x slower). Returns one record per (mode, straggler, step): loss, step, wall time since
    the start (`time_s`), staleness where recorded. Plot loss against `step` and against `time_s`
    (`llama_course.core.plots`), or `summarise(records)`.

    About 10 s of launch plus training per run on a 2-core machine; 12 runs by default."""
    from llama_course.trainer import train

    base = [f"training.steps={steps}", "parallel.num_servers=1", f"parallel.dp={workers}", "cluster.num_gpus=null",
            f"parallel.global_batch_size={4 * workers}", "parallel.micro_batch_size=4", "training.warmup_steps=5",
            "training.eval_every=0", "seq_len=64", "training.precision=fp32", "parallel.implementation=course",
            *overrides]
    records = []
    selected = MODES if modes is None else {m: MODES[m] for m in modes}
    for mode, sets in selected.items():
        for slow in ([None, straggler] if straggler else [None]):
            extra = [f"faults.slow={{{workers - 1}: {slow}}}"] if slow else []
            start = time.perf_counter()
            recs = train(config, base + sets + extra)
            elapsed, wall = time.perf_counter() - start, 0.0
            for r in recs:
                wall += r["step_time_s"]
                records.append({"mode": mode, "straggler": slow or 1.0, "step": r["step"], "loss": r["loss"],
                                "time_s": wall, "staleness": r.get("staleness"), "run_s": elapsed})
    return records


def summarise(records: list) -> list:
    """Per (mode, straggler): final loss, training seconds, mean staleness."""
    out = {}
    for r in records:
        key = (r["mode"], r["straggler"])
        o = out.setdefault(key, {"mode": r["mode"], "straggler": r["straggler"], "stale": []})
        o["final_loss"], o["time_s"] = r["loss"], r["time_s"]
        if r.get("staleness") is not None:
            o["stale"].append(r["staleness"])
    rows = []
    for o in out.values():
        st = o.pop("stale")
        o["mean_staleness"] = sum(st) / len(st) if st else 0.0
        rows.append(o)
    return rows


def converged(records: list, mode: str, straggler: float = 1.0) -> bool:
    """Whether a mode's loss fell (last 3 steps below the first 3, and finite)."""
    losses = [r["loss"] for r in records if r["mode"] == mode and r["straggler"] == straggler]
    return len(losses) >= 6 and all(math.isfinite(x) for x in losses) and \
        sum(losses[-3:]) < sum(losses[:3])
