"""Pipeline-parallel communication: point-to-point sends of activations forward and gradients backward.

Between neighbouring stages a micro-batch crosses twice per step: its activation (b, s, h) forward and the
gradient of that activation backward, e b s h bytes each way (s/t with sequence parallelism). That is
all a pipeline sends: far less than tensor parallelism's all-reduces, which is why pipeline stages can sit
on different nodes.

Sends are asynchronous (isend, completed at the end of the step), receives block. With a non-blocking
send, a schedule cannot deadlock as long as every receive's message is sent by some earlier task of the
peer: exactly the condition `simulator.pipeline_parallel.simulate_pipeline` checks. Each message carries a
tag naming (kind, micro-batch, virtual stage), so activations and gradients travelling the same link in
the same direction (interleaved 1F1B) are never confused.

On GPUs (NCCL) tags are ignored and messages between two ranks match in the order they are posted. GPipe
and 1F1B send one kind per direction in micro-batch order, so that holds; the interleaved schedule mixes
chunks on one link and is exercised here on gloo only (torch's ScheduleInterleaved1F1B, `implementation:
torch`, batches its sends and receives for NCCL).

Every call records a span (send | recv on the comm stream) in the rank's Tracer.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from simulator import spec


class PipelineComm:
    """send/recv of one rank to its pipeline neighbours over ctx.pp_group (global ranks computed here)."""

    def __init__(self, ctx, tracer, n_virtual: int):
        self.ctx, self.tracer, self.n_virtual = ctx, tracer, n_virtual
        self.pending: list = []
        self.recv_wait = 0.0

    def global_rank(self, pp_rank: int) -> int:
        c = self.ctx
        return spec.rank_of(pp_rank, c.dp_rank, c.tp_rank, c.dp, c.tp)

    def tag(self, kind: str, micro_batch: int, stage: int) -> int:
        """Unique per message of a step: stage is the receiving virtual stage."""
        return (micro_batch * self.n_virtual + stage) * 2 + (kind == "B")

    def send(self, tensor: torch.Tensor, stage: int, kind: str, micro_batch: int) -> None:
        """Send to the rank holding virtual stage `stage` (activation: kind F, gradient: kind B)."""
        dst = self.global_rank(stage % self.ctx.pp)
        with self.tracer.span("send", "comm", micro_batch=micro_batch, stage=stage):
            tensor = tensor.detach().contiguous()
            self.pending.append((dist.isend(tensor, dst=dst, group=self.ctx.pp_group,
                                            tag=self.tag(kind, micro_batch, stage)), tensor))

    def recv(self, shape, dtype, stage_from: int, stage: int, kind: str, micro_batch: int) -> torch.Tensor:
        """Blocking receive of the message for virtual stage `stage` from the rank of `stage_from`."""
        src = self.global_rank(stage_from % self.ctx.pp)
        buf = torch.empty(shape, dtype=dtype, device=self.ctx.device)
        start = time.perf_counter()
        with self.tracer.span("recv", "comm", micro_batch=micro_batch, stage=stage):
            dist.recv(buf, src=src, group=self.ctx.pp_group, tag=self.tag(kind, micro_batch, stage))
        self.recv_wait += time.perf_counter() - start
        return buf

    def wait_all(self) -> None:
        """Complete every isend of the step (their buffers may be freed after this)."""
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()
