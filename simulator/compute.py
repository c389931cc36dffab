"""Compute: how long a block's kernels take on one GPU (a roofline per kernel).

Each kernel of `workload.layer_ops` (matmuls, attention, norms, activations, dropout, residual adds) takes

    t = max(F / (P e_mm), Q / (W e_mem)) + t_launch

with F its FLOPs, Q its bytes, P the dense peak of the run's precision, W the HBM bandwidth, and the two
efficiencies calibrated once per GPU type (`hardware.py`). Large matmuls are compute bound; norms, softmax
and dropout are memory bound, which is why small hidden sizes and tensor parallelism without sequence
parallelism (replicated norms and dropouts) lose throughput. A fused attention kernel (FlashAttention)
runs at FLASH_EFFICIENCY of the matmul efficiency (FlashAttention-2 reports ~70% of A100 peak forward,
less backward), and with a causal mask it runs only the tiles on and below the diagonal
(`workload.causal_fraction`, about half the s x s square): its time is priced on those, while the model
FLOPs (and MFU) keep counting the full square.

On a CPU (`cpu` profile) the same roofline holds per process, with a large fixed cost per kernel (eager
PyTorch's dispatch and autograd bookkeeping), and compute stretched by `hw.compute_slowdown` when more
ranks than cores share the machine.

Backward costs 2x the forward FLOPs of matmuls (input and weight gradients) and 2x the bytes of
element-wise ops. Recomputation adds a forward before the backward: `full` the whole block, `selective`
the attention core only (Korthikanti et al. 2022).

    python -c "from simulator.compute import demo; demo()"
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.hardware import Hardware
from simulator.workload import backward_op, embedding_ops, head_ops, layer_ops

FLASH_EFFICIENCY = 0.85


def op_time(op, hw: Hardware, precision: str) -> float:
    """Seconds of one kernel on one GPU."""
    mem = op.bytes / (hw.memory_bandwidth * hw.memory_efficiency)
    if op.kind == "memory":
        return (mem + hw.kernel_overhead) * hw.compute_slowdown
    eff = hw.matmul_efficiency * (FLASH_EFFICIENCY if op.kind == "flash" else 1.0)
    flops = op.flops if op.executed is None else op.executed
    return (max(flops / (hw.peak(precision) * eff), mem) + hw.kernel_overhead) * hw.compute_slowdown


def ops_time(ops, hw: Hardware, precision: str) -> float:
    return sum(op_time(op, hw, precision) for op in ops)


@dataclass
class BlockTimes:
    """Seconds of one block for one micro-batch on one GPU (compute only, no communication)."""

    forward: float
    backward: float
    recompute: float
    forward_flops: float
    recompute_flops: float


def block_times(model, seq_len: int, micro_batch: int, tp: int, sequence_parallel: bool, precision: str,
                flash: bool, recompute: str, hw: Hardware) -> BlockTimes:
    ops = layer_ops(model, seq_len, micro_batch, tp, sequence_parallel, precision, flash)
    fwd = ops_time(ops, hw, precision)
    bwd = ops_time([backward_op(o) for o in ops], hw, precision)
    fwd_flops = sum(o.flops for o in ops if o.kind == "matmul" or o.kind == "flash")
    if recompute == "full":
        re, re_flops = fwd, fwd_flops
    elif recompute == "selective" and not flash:
        core = [o for o in ops if o.core]
        re, re_flops = ops_time(core, hw, precision), sum(o.flops for o in core)
    else:
        re, re_flops = 0.0, 0.0
    return BlockTimes(fwd, bwd, re, fwd_flops, re_flops)


def head_times(model, seq_len: int, micro_batch: int, tp: int, precision: str, hw: Hardware) -> tuple:
    """(forward, backward) seconds of the final norm, output head and loss on the last stage."""
    ops = head_ops(model, seq_len, micro_batch, tp, precision)
    return ops_time(ops, hw, precision), ops_time([backward_op(o) for o in ops], hw, precision)


def embedding_times(model, seq_len: int, micro_batch: int, tp: int, precision: str, hw: Hardware) -> tuple:
    """(forward, backward) seconds of the embedding lookup on the first stage."""
    ops = embedding_ops(model, seq_len, micro_batch, tp, precision)
    return ops_time(ops, hw, precision), ops_time([backward_op(o) for o in ops], hw, precision)


def optimizer_time(n_params_local: float, precision: str, optimizer: str, hw: Hardware,
                   tensors: float | None = None) -> float:
    """The optimizer step is memory bound: read weights, grads and states, write weights and states.

    On a CPU profile with measured optimizer costs: tensors x per-tensor cost + n_params x per-element cost
    (the step, the gradient norm and clipping of the course's AdamW, as `bench` timed them)."""
    from simulator.workload import state_bytes_per_param

    if hw.optimizer_per_param is not None:
        fixed = (tensors or 0.0) * hw.optimizer_per_tensor
        return (fixed + n_params_local * hw.optimizer_per_param) * hw.compute_slowdown
    per = state_bytes_per_param(precision, optimizer)
    traffic = 2 * per["params"] + per["grads"] + 2 * per["optimizer"]
    return n_params_local * traffic / (hw.memory_bandwidth * hw.memory_efficiency) + 10 * hw.kernel_overhead


def demo() -> None:
    from simulator.config import load_config
    from simulator.hardware import gpu_preset

    cfg = load_config({"model": {"preset": "llama-7b"}, "seq_len": 4096})
    hw = gpu_preset("a100-80gb")
    for op in layer_ops(cfg.model, 4096, 1, 1, False, "bf16", True):
        print(f"{op.name:14s} {op.kind:7s} {op.flops / 1e9:9.1f} GFLOP {op.bytes / 1e6:9.1f} MB "
              f"{op_time(op, hw, 'bf16') * 1e3:7.3f} ms")
