"""Compute: how long a block's kernels take on one GPU (a roofline per kernel).

Each kernel of `workload.layer_ops` (matmuls, attention, norms, activations, dropout, residual adds) takes

    t = max(F / (P e_mm e_shape), Q / (W e_mem)) + t_launch

with F its FLOPs, Q its bytes, P the dense peak of the run's precision, W the HBM bandwidth, the two
efficiencies e_mm and e_mem calibrated once per GPU type (`hardware.py`), and e_shape what the matmul's
shape keeps of e_mm (`gemm_efficiency`): its output is cut into tiles run one per SM at a time, so it runs
in waves, and the last wave, the partial tiles and each tile's fill and epilogue are paid for as if full.
That is why small micro-batches, narrow models and large tensor-parallel degrees (short, thin GEMMs) reach
less of the peak; a backward is priced as its two products (dgrad: m x n x k, wgrad: k x m x n). Large matmuls are compute bound; norms, softmax
and dropout are memory bound, which is why small hidden sizes and tensor parallelism without sequence
parallelism (replicated norms and dropouts) lose throughput. A fused attention kernel (FlashAttention)
runs at FLASH_EFFICIENCY of the matmul efficiency (FlashAttention-2 reports ~70% of A100 peak forward,
less backward), and with a causal mask it runs only the tiles on and below the diagonal
(`workload.causal_fraction`, about half the s x s square): its time is priced on those, while the model
FLOPs (and MFU) keep counting the full square.

On a CPU (`cpu` profile) the same roofline holds per process, with a large fixed cost per kernel (eager
PyTorch's dispatch and autograd bookkeeping), fused attention priced as `bench` timed it (a fixed cost and a
cost per score element computed, `hw.attention_cost`), and compute stretched by `hw.compute_slowdown` when more
ranks than cores share the machine (a pipeline's stages only while they compute at once: the simulated
pipeline shares the cores among them, `pipeline_parallel.SharedCores`).

With `training.fp8` the blocks' linear matmuls run at the GPU's FP8 peak (2x bf16 on Hopper; the same
calibrated efficiency, an assumption) after a memory-bound cast of their operands (`workload.fp8_ops`);
the attention core, norms and the output head keep the training precision. On the cpu profile FP8 is
emulated at the fp32 peak, so only the casts change its time.

Backward costs 2x the forward FLOPs of matmuls (input and weight gradients) and 2x the bytes of
element-wise ops. Recomputation adds a forward before the backward: `full` the whole block, `selective`
the attention core only (Korthikanti et al. 2022; nothing with a fused kernel), `selective_op` that and
every second linear matmul of the block (torchtitan's per-op policy: `workload.alternate_matmuls`).

    python -c "from simulator.compute import demo; demo()"
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from simulator.config import load_config
from simulator.hardware import Hardware, gpu_preset
from simulator.workload import (
    alternate_matmuls,
    attention_scores,
    backward_op,
    embedding_ops,
    fp8_ops,
    head_ops,
    layer_ops,
    state_bytes_per_param,
)

FLASH_EFFICIENCY = 0.85

# Output tiles a GEMM kernel may use (CUTLASS / cuBLAS bf16 kernels on Ampere and Hopper), with the share of
# the largest tile's per-SM throughput each reaches (smaller tiles reuse each loaded operand less); an
# assumption from the orders of magnitude of CUTLASS profiler runs, not a fit.
GEMM_TILES = ((256, 128, 1.0), (128, 256, 1.0), (128, 128, 0.92), (128, 64, 0.82), (64, 128, 0.82), (64, 64, 0.68))
TILE_K_OVERHEAD = 64
"""Per tile, the pipeline fill and the epilogue (writing the tile) cost about this many more steps of k."""
SPLIT_K = (1, 2, 4)


@lru_cache(maxsize=1 << 16)
def gemm_efficiency(batch: int, m: int, k: int, n: int, sms: int) -> float:
    """Share of a large GEMM's throughput that `batch` products (m x k) @ (k x n) reach on `sms` SMs.

    A kernel cuts the m x n output into tiles, one per SM at a time, so it runs in waves; of all the
    tile-steps the waves pay for, the useful share is

        e_tile x (batch m n k) / (waves x sms x Tm x Tn x (k / split + K0) x split),
        waves = ceil(batch ceil(m / Tm) ceil(n / Tn) split / sms)

    (wave quantization: the last wave leaves SMs idle; tile quantization: a partial tile costs a whole one;
    K0 = TILE_K_OVERHEAD: short reductions pay the fill and the epilogue of every tile). The best of the
    tiles and split-K factors is taken, as cuBLAS's heuristics pick one. Large, well-shaped GEMMs -> 1."""
    best = 0.0
    for tm, tn, e_tile in GEMM_TILES:
        for split in SPLIT_K:
            if split > 1 and k // split < 256:
                continue
            tiles = batch * -(-m // tm) * -(-n // tn) * split
            waves = -(-tiles // sms)
            paid = waves * sms * tm * tn * (k / split + TILE_K_OVERHEAD)
            best = max(best, e_tile * batch * m * n * k / paid)
    return best


def matmul_time(op, hw: Hardware, precision: str) -> float:
    """Compute seconds of a matmul op: its products (a backward: dgrad and wgrad) at the calibrated
    efficiency x their shape's `gemm_efficiency` (1 without a shape or an SM count, as on cpu)."""
    rate = hw.peak("fp8" if op.fp8 else precision) * hw.matmul_efficiency
    if op.shape is None or not hw.sm_count:
        return op.flops / rate
    batch, m, k, n = op.shape
    products = ((m, n, k), (k, m, n)) if op.backward else ((m, k, n),)
    return sum(2.0 * batch * a * b * c / (rate * gemm_efficiency(batch, a, b, c, hw.sm_count))
               for a, b, c in products)


def op_time(op, hw: Hardware, precision: str) -> float:
    """Seconds of one kernel on one GPU."""
    mem = op.bytes / (hw.memory_bandwidth * hw.memory_efficiency)
    if op.kind == "memory":
        return (mem + hw.kernel_overhead) * hw.compute_slowdown
    if op.kind == "matmul":
        compute = matmul_time(op, hw, precision)
    elif hw.attention_cost and op.shape:             # cpu: PyTorch's fused kernel as bench timed it
        fixed, per_score, per_score_dim = hw.attention_cost[1 if op.backward else 0]
        scores, hd = attention_scores(op, cpu=True)
        return (fixed + scores * (per_score + per_score_dim * hd)) * hw.compute_slowdown
    else:
        flops = op.flops if op.executed is None else op.executed
        compute = flops / (hw.peak(precision) * hw.matmul_efficiency * FLASH_EFFICIENCY)
    return (max(compute, mem) + hw.kernel_overhead) * hw.compute_slowdown


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
    weight_grad: float = 0.0    # the part of `backward` that is the weight matmuls' wgrad products (zero
                                # bubble runs it as its own task, W)


def weight_grad_time(ops, hw: Hardware, precision: str) -> float:
    """Seconds of the wgrad products of the forward `ops`' weight matmuls (not the attention core's): each
    dW = dY^T X, a (k x m) @ (m x n) product with the forward's FLOPs, priced as `matmul_time` prices it
    inside the backward (the rest of the backward is the input gradient)."""
    out = 0.0
    for op in ops:
        if op.kind == "matmul" and not op.core:
            wgrad = op if op.shape is None else op._replace(shape=(op.shape[0], op.shape[2], op.shape[1], op.shape[3]))
            out += matmul_time(wgrad, hw, precision) * hw.compute_slowdown
    return out


def block_times(model, seq_len: int, micro_batch: int, tp: int, sequence_parallel: bool, precision: str,
                flash: bool, recompute: str, hw: Hardware, fp8: bool = False, cp: int = 1, ep: int = 1) -> BlockTimes:
    ops = layer_ops(model, seq_len, micro_batch, tp, sequence_parallel, precision, flash, cp, ep)
    if fp8:                         # training.fp8: the linear matmuls at the fp8 peak, after their casts
        ops = fp8_ops(ops, precision)
    fwd = ops_time(ops, hw, precision)
    bwd = ops_time([backward_op(o) for o in ops], hw, precision)
    fwd_flops = sum(o.flops for o in ops if o.kind == "matmul" or o.kind == "flash")
    if recompute == "full":
        re, re_flops = fwd, fwd_flops
    elif recompute in ("selective", "selective_op"):
        again = [] if flash else [o for o in ops if o.core]
        if recompute == "selective_op":
            again += [o._replace(fp8=fp8) for o in alternate_matmuls(model, seq_len // cp, micro_batch, tp, precision)]
        re, re_flops = ops_time(again, hw, precision), sum(o.flops for o in again)
    else:
        re, re_flops = 0.0, 0.0
    return BlockTimes(fwd, bwd, re, fwd_flops, re_flops, weight_grad_time(ops, hw, precision))


def head_times(model, seq_len: int, micro_batch: int, tp: int, precision: str, hw: Hardware) -> tuple:
    """(forward, backward) seconds of the final norm, output head and loss on the last stage."""
    ops = head_ops(model, seq_len, micro_batch, tp, precision)
    return ops_time(ops, hw, precision), ops_time([backward_op(o) for o in ops], hw, precision)


def head_weight_grad(model, seq_len: int, micro_batch: int, tp: int, precision: str, hw: Hardware) -> float:
    """Seconds of the output head's weight gradient (part of head_times' backward)."""
    return weight_grad_time(head_ops(model, seq_len, micro_batch, tp, precision), hw, precision)


def embedding_times(model, seq_len: int, micro_batch: int, tp: int, precision: str, hw: Hardware) -> tuple:
    """(forward, backward) seconds of the embedding lookup on the first stage."""
    ops = embedding_ops(model, seq_len, micro_batch, tp, precision)
    return ops_time(ops, hw, precision), ops_time([backward_op(o) for o in ops], hw, precision)


def optimizer_time(n_params_local: float, precision: str, optimizer: str, hw: Hardware,
                   tensors: float | None = None) -> float:
    """The optimizer step is memory bound: read weights, grads and states, write weights and states.

    On a CPU profile with measured optimizer costs: tensors x per-tensor cost + n_params x per-element cost
    (the step, the gradient norm and clipping of the course's AdamW, as `bench` timed them)."""
    if hw.optimizer_per_param is not None:
        fixed = (tensors or 0.0) * hw.optimizer_per_tensor
        return (fixed + n_params_local * hw.optimizer_per_param) * hw.compute_slowdown
    per = state_bytes_per_param(precision, optimizer)
    traffic = 2 * per["params"] + per["grads"] + 2 * per["optimizer"]
    return n_params_local * traffic / (hw.memory_bandwidth * hw.memory_efficiency) + 10 * hw.kernel_overhead


def demo() -> None:
    cfg = load_config({"model": {"preset": "llama-7b"}, "seq_len": 4096})
    hw = gpu_preset("a100-80gb")
    for op in layer_ops(cfg.model, 4096, 1, 1, False, "bf16", True):
        print(f"{op.name:14s} {op.kind:7s} {op.flops / 1e9:9.1f} GFLOP {op.bytes / 1e6:9.1f} MB "
              f"{op_time(op, hw, 'bf16') * 1e3:7.3f} ms")
