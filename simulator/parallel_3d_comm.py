"""The 3-D step's own messages: pipeline sends between stages and the small all-reduces every step ends
with (parallel_3d.py composes them with each strategy module's collectives). `layout` is a
parallel_3d.Layout (its groups); this module needs only its group methods.
"""

from __future__ import annotations

from simulator.collectives import CommModel
from simulator.workload import DTYPE_BYTES


def p2p_time(cfg, comm: CommModel, layout) -> float:
    """One activation (or gradient) between consecutive pipeline ranks: each TP rank sends 1/t of it over
    its own NIC, then an all-gather inside the node restores it (Megatron-LM's scatter/gather)."""
    if layout.pp <= 1:
        return 0.0
    a = activation_message_bytes(cfg)
    group = layout.pp_group()
    t = comm.time("send", (group[0], group[1]), a / layout.tp)
    if layout.tp > 1 and not cfg.parallel.sequence_parallel:
        t += comm.time("all_gather", layout.tp_group(), a)
    return t


def activation_message_bytes(cfg) -> float:
    """Bytes of one micro-batch's activation between pipeline stages: b (s / cp) h in the compute precision."""
    p = cfg.parallel
    return p.micro_batch_size * cfg.seq_len // p.cp * cfg.model.dim * DTYPE_BYTES[cfg.training.precision]


SCALAR_BYTES = 8
"""A loss or a squared gradient norm on the wire (float64, as the runtime sends them)."""


def step_scalars(cfg, comm: CommModel, layout) -> float:
    """Seconds of the small all-reduces every step ends with, one after another on the critical path:
    the global-batch loss averaged over the data-parallel group, the last pipeline stage's loss shared
    over the pipeline, and, when the gradient is split across ranks, the squared norm summed over the
    groups that split it (tensor and pipeline ranks; data ranks under ZeRO-2/3) before clipping.
    Each moves 8 bytes, so it costs a collective's fixed latency: microseconds on NVLink, about a
    millisecond between processes on a CPU (what `bench` measures in situ). A parameter server's
    workers get both from the server's reply instead (parameter_server.contribute)."""
    p = cfg.parallel
    if p.strategy == "parameter_server":
        return 0.0
    groups = []
    if layout.dp > 1:
        groups.append(layout.dp_group())                      # loss
        if p.zero_stage >= 2:
            groups.append(layout.dp_group())                  # norm of the sharded gradient
    if layout.pp > 1:
        groups += [layout.pp_group(), layout.pp_group()]      # loss from the last stage, norm
    if layout.tp > 1:
        groups.append(layout.tp_group())                      # norm of the tensor-parallel shards
    return sum(comm.time("all_reduce", g, SCALAR_BYTES) for g in groups)
