"""Load balancing: stragglers, heterogeneous workers, and skewed data.

In synchronous data parallel the step lasts as long as the slowest rank: with per-sequence times t_i and
G/N sequences each, step = (G/N) max_i t_i + comm. One rank 3x slower makes a 4-rank step 3x longer and
wastes 2/3 of the three fast ranks' time. Policies (`load_balance.policy`):

    none            equal shares                                  step = (G/N) max_i t_i
    dynamic_batch   rank i gets n_i ~ G (1/t_i) / sum_j (1/t_j)   step = G / sum_j (1/t_j)      (the optimum)
                    sequences, from its measured speed; its gradient is weighted n_i / G, so the summed
                    update is exactly the global-batch mean whatever the shares (tested against one process)
    backup_workers  N ranks start, the first N - b gradients are   step = (N-b)-th fastest; the update uses
                    used, the rest dropped (Chen et al. 2016)      (N-b)/N G sequences (a smaller batch)

With t = (1, 1, 1, 3): none runs at 1/3 of the straggler-free throughput, dynamic_batch at 4 / (3 + 1/3)
/ 4 = 90%, backup_workers (b = 1) at ~100% of the steps but 3/4 of the sequences per update.

Cost: dynamic_batch adds one all-reduce of N floats per step (the measured speeds, so every rank computes
the same shares) and uneven micro-batches; backup_workers one counter in the rendezvous store per step,
polled by late ranks, and it discards b/N of the computed work (b/N of the FLOPs are wasted).

Data skew: with variable-length documents, equal document counts are unequal tokens. `skew_report`
compares naive sharding (equal counts, padded batches), length-bucketing (documents sorted by length,
assigned largest-first to the rank with the fewest tokens, batched with similar lengths: little padding,
balanced tokens) and packing (documents concatenated and cut into equal windows: equal tokens by
construction, what `data.pack` does), by tokens per rank and by measured forward + backward time.

In the engine a policy is a batch plan (`LoadBalancedPlan`): it picks the rank's sequences and weighs
each micro-batch's loss; any data-parallel gradient sync then averages (the course's bucketed ring and
ZeRO-1/2/3, or torch's all-reduce), so load balancing composes with ZeRO.

Seed questions: 6 (load balancing), 16 (stragglers), 24 (heterogeneous clusters), 30 (scheduling work).

    llama-course train configs/tiny.yaml --nproc 4 --set 'faults.slow={3: 3}' --set load_balance.policy=dynamic_batch
    llama-course train configs/tiny.yaml --nproc 4 --set 'faults.slow={3: 3}' --set load_balance.policy=dynamic_batch \
        --set parallel.zero_stage=2                # with ZeRO-2
    python benchmarks/load_balancing.py            # none / dynamic_batch / backup_workers, measured vs simulated
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch
import torch.distributed as dist

from llama_course.core.data import get_batch, load_tokens
from llama_course.core.engine_protocol import Abandon, BatchPlan
from simulator.parameter_server import assign_shards

_instances = itertools.count()


class LoadBalancedPlan(BatchPlan):
    """Which sequences each rank trains on and what its gradient weighs, under a straggler.

    dynamic_batch: rank i takes n_i sequences in proportion to its measured speed; micro-batch j of
    n_ij sequences weighs dp n_ij / G, so the dp-mean the gradient sync computes is the global-batch mean.
    backup_workers: equal shares weighing dp / (N - b) each; the first N - b ranks to finish count, a
    late rank abandons its compute and contributes 0 (the engine reduces after backward for this plan)."""

    name = "load_balancing"

    def __init__(self, cfg, ctx):
        self.ctx, self.policy = ctx, cfg.load_balance.policy
        self.G, self.mb = cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size
        self.speed = 1.0                                # sequences per second, measured (EMA)
        self.weights_of_ranks = np.ones(ctx.dp)
        self.used = ctx.dp - (cfg.load_balance.backup_workers if self.policy == "backup_workers" else 0)
        self.key = f"llama_course/backup/{next(_instances)}"
        self.store = dist.distributed_c10d._get_default_store() if self.policy == "backup_workers" else None
        self.step_index = 0
        self.shares_log: list = []

    def batches(self, engine, sampler, sequences, step: int) -> list:
        if self.policy != "dynamic_batch":
            return super().batches(engine, sampler, sequences, step)
        speeds = torch.zeros(self.ctx.dp, dtype=torch.float64, device=self.ctx.device)   # NCCL: on the GPU
        speeds[self.ctx.dp_rank] = self.speed
        dist.all_reduce(speeds, group=self.ctx.dp_group)
        self.weights_of_ranks = speeds.cpu().numpy()
        shares = sampler.shares(step, self.weights_of_ranks)
        self.shares_log.append([len(s) for s in shares])
        mine = shares[self.ctx.dp_rank]
        return [get_batch(sequences, mine[i: i + self.mb]) for i in range(0, len(mine), self.mb)]

    def weights(self, engine, micro_batches: list) -> list:
        dp = self.ctx.dp
        if self.policy == "dynamic_batch":
            return [dp * len(x) / self.G for x, _ in micro_batches]
        n_seq = max(sum(len(x) for x, _ in micro_batches), 1)
        return [dp / self.used * len(x) / n_seq for x, _ in micro_batches]

    def before_micro_batch(self, engine) -> None:
        if self.policy == "backup_workers":
            self._check_abandon()

    def contribution(self, engine, seconds: float, micro_batches: list, abandoned: bool) -> float:
        """backup_workers: count this rank in (the first `used` arrivals are kept); measure its speed."""
        n_seq = sum(len(x) for x, _ in micro_batches)
        weight = 0.0 if abandoned else 1.0
        if self.policy == "backup_workers" and not abandoned:
            order = self.store.add(f"{self.key}/{self.step_index}", 1)
            weight = 1.0 if order <= self.used else 0.0
        if n_seq and weight:
            self.speed = n_seq / seconds if self.step_index == 0 else 0.5 * self.speed + 0.5 * n_seq / seconds
        self.step_index += 1
        return weight

    def stretch(self, engine, seconds: float) -> None:
        """faults.slow; under backup_workers the injected delay is slept in slices, polling whether to quit."""
        if engine.slow_factor <= 1:
            return
        if self.policy != "backup_workers":
            return super().stretch(engine, seconds)
        end = time.perf_counter() + (engine.slow_factor - 1) * seconds
        with engine.tracer.span("straggle", "compute"):
            while time.perf_counter() < end:
                self._check_abandon()
                time.sleep(min(0.005, max(0.0, end - time.perf_counter())))

    def _check_abandon(self) -> None:
        if int(self.store.add(f"{self.key}/{self.step_index}", 0)) >= self.used:
            raise Abandon


# ---------------------------------------------------------------------------------------------
# data skew
# ---------------------------------------------------------------------------------------------

def shard_documents(lengths, dp: int, method: str) -> list:
    """Document indices of each rank for one global batch of documents.

    naive: contiguous equal counts; bucketed: largest-first to the rank with the fewest tokens
    (`assign_shards`, the parameter server's balancer), each rank's documents sorted by length."""
    lengths = np.asarray(lengths)
    if method == "naive":
        return [list(part) for part in np.array_split(np.arange(len(lengths)), dp)]
    if method == "bucketed":
        owner = assign_shards(lengths, dp)
        ranks = [[i for i in range(len(lengths)) if owner[i] == r] for r in range(dp)]
        return [sorted(r, key=lambda i: -lengths[i]) for r in ranks]
    raise ValueError(f"method must be naive or bucketed, got {method}")


def padded_tokens(lengths, docs: list, micro_batch: int) -> int:
    """Tokens a rank computes when each micro-batch is padded to its longest document."""
    total = 0
    for i in range(0, len(docs), micro_batch):
        group = [lengths[d] for d in docs[i: i + micro_batch]]
        total += max(group) * len(group)
    return total


def skew_report(lengths, dp: int = 4, micro_batch: int = 4, model=None, seq_cap: int = 256) -> dict:
    """Tokens per rank (real and padded) under naive, bucketed and packed sharding of one batch of
    documents, and, with `model`, the measured forward + backward seconds of the slowest rank and of the
    mean rank (every rank's work run in turn in this process). Packing gives every rank sum / dp tokens."""
    lengths = [min(int(n), seq_cap) for n in lengths]
    out = {}
    for method in ("naive", "bucketed", "packed"):
        if method == "packed":
            per = sum(lengths) // dp
            loads, padded = [per] * dp, [per] * dp
            work = [[(micro_batch, per // micro_batch)] for _ in range(dp)]
        else:
            parts = shard_documents(lengths, dp, method)
            loads = [sum(lengths[d] for d in p) for p in parts]
            padded = [padded_tokens(lengths, p, micro_batch) for p in parts]
            work = [[(len(p[i: i + micro_batch]), max(lengths[d] for d in p[i: i + micro_batch]))
                     for i in range(0, len(p), micro_batch)] for p in parts]
        row = {"tokens_per_rank": loads, "padded_tokens_per_rank": padded,
               "imbalance": max(padded) / (sum(lengths) / dp)}
        if model is not None:
            times = [_time_work(model, w) for w in work]
            row.update({"measured_slowest_s": max(times), "measured_mean_s": sum(times) / dp})
        out[method] = row
    return out


def _time_work(model, work: list) -> float:
    """Forward + backward seconds of a list of (batch, length) random-token micro-batches."""
    vocab = model.output.weight.shape[0] if hasattr(model, "output") else 512
    start = time.perf_counter()
    for b, n in work:
        x = torch.randint(0, vocab, (b, max(n, 2)), device=next(model.parameters()).device)
        logits = model(x)
        logits.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def corpus_document_lengths(cfg) -> list:
    """Token length of every training document of the config's corpus (split at end-of-text)."""
    data = load_tokens(cfg)
    if data.eot_id is None:
        raise ValueError("the corpus has no end-of-text token: document lengths are unknown")
    ends = np.flatnonzero(np.asarray(data.train) == data.eot_id)
    return list(np.diff(np.concatenate([[-1], ends])))
