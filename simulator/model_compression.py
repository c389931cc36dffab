"""Model compression in the cost model (concept 12): what low-bit weights and structured pruning change.

Two fields of `model` (torch-free, like the whole simulator):

- `model.weight_bits` (16 | 8 | 4, default: the training precision) stores the matrices in fewer bits,
  as `llama-course compress --method int8|int4` does, plus fp16 scales: int8 has one per output
  channel (2/h bytes per weight), int4 one per `model.weight_group_size` weights (2/g bytes per weight):

      bytes per weight  w = bits / 8 + 2 / group        (int4, g = 64: 0.531; int8, h = 8192: 1.0002)

  What it changes in a training step: the working copy of the weights that forward and backward read
  (memory `params` = Psi w instead of Psi x 2) and the bytes of every weight all-gather (ZeRO-1/2 after
  the step, ZeRO-3 before each block's forward and backward, as ZeRO++'s quantized weights do).
  What it does not change: gradients (still 16-bit, compressed only by `parallel.compression`, concept 11),
  the optimizer's fp32 master weights and moments (12 bytes of Adam's 16 per parameter: quantizing the
  weights saves 1.5 of 16 bytes when training), and FLOPs (weights are dequantized for a 16-bit matmul).
  Low-bit weights pay at inference, where the weights are nearly all the memory: `weights_bytes` in the
  `compression` JSON field is what holding the model needs (llama2-70b: 140 GB in bf16, 37 GB in int4).
- `model.structured_sparsity` (0 <= r < 1) removes a fraction r of every block's FFN channels, as
  `compress --method prune --set structured=true --set prune_heads=false` does: the simulator runs the
  narrower model (ffn_dim (1 - r), rounded to a multiple of tp), so parameters, FLOPs (6 d f per token
  per layer fall by r), activations, gradient bytes and optimizer state all shrink together. Heads are
  not modelled (the runtime can prune them too). Unstructured sparsity changes nothing here: a dense
  matmul of a matrix with zeros costs the same.

    llama-course simulate configs/llama2-70b-a100.yaml --set model.weight_bits=4
    llama-course simulate configs/llama-7b-a100.yaml --set model.structured_sparsity=0.5 --json

Seed questions 3 and 5. The runtime's side is `llama_course/compression/model_compression.py`.
"""

from __future__ import annotations

import dataclasses

from simulator.workload import DTYPE_BYTES, count_params, layer_matmul_params

SCALE_BYTES = 2          # fp16 scales


def active(cfg) -> bool:
    m = cfg.model
    return m.weight_bits is not None or m.structured_sparsity > 0


def weight_bytes_per_param(cfg) -> float:
    """Bytes per weight of the working copy that forward/backward read and all-gathers move."""
    m = cfg.model
    if m.weight_bits is None:
        return float(DTYPE_BYTES[cfg.training.precision])
    if m.weight_bits == 4:
        return 0.5 + SCALE_BYTES / m.weight_group_size
    if m.weight_bits == 8:
        return 1.0 + SCALE_BYTES / m.dim
    return 2.0


def pruned_ffn_dim(cfg) -> int:
    """FFN width after removing model.structured_sparsity of the channels (a multiple of tp, at least tp)."""
    m, tp = cfg.model, cfg.parallel.tp
    return max(tp, round(m.ffn_dim * (1 - m.structured_sparsity) / tp) * tp)


def effective_config(cfg):
    """The config the cost model simulates: the structurally pruned (narrower) model, when one is asked for."""
    if cfg.model.structured_sparsity <= 0:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ffn_dim=pruned_ffn_dim(cfg)))


def adjust_memory(cfg, mem: dict) -> tuple:
    """(memory per GPU with low-bit weights, the `compression` JSON field or None) for simulate().

    mem is memory.layout_memory's dict; its `params` entry holds Psi x (2 or 4) bytes (/dp under ZeRO-3).
    With weight_bits set it becomes Psi x w; training in fp32 keeps an fp32 master copy beside the low-bit
    working copy (in mixed precision the master is already in `optimizer`).
    """
    if not active(cfg):
        return mem, None
    m = cfg.model
    base = float(DTYPE_BYTES[cfg.training.precision])
    w = weight_bytes_per_param(cfg)
    out = dict(mem)
    if m.weight_bits is not None:
        out["params"] = mem["params"] * w / base
        if cfg.training.precision == "fp32":
            out["optimizer"] = mem["optimizer"] + mem["params"]
        out["total"] = sum(v for k, v in out.items() if k != "total")
    n_params = count_params(m, cfg.seq_len)
    info = {"weight_bits": m.weight_bits or 8 * int(base), "weight_bytes_per_param": w,
            "structured_sparsity": m.structured_sparsity, "ffn_dim": m.ffn_dim,
            "n_params": n_params, "weights_bytes": n_params * w,
            "layer_matmul_params": layer_matmul_params(m)}
    return out, info


def weights_bytes(model, weight_bits: int | None, group_size: int = 64) -> float:
    """Bytes to hold a model's weights at weight_bits (None = 16-bit): the inference footprint before the KV cache."""
    n = count_params(model)
    if weight_bits == 4:
        return n * (0.5 + SCALE_BYTES / group_size)
    if weight_bits == 8:
        return n * (1.0 + SCALE_BYTES / model.dim)
    return n * 2.0


def summary_line(info: dict) -> str:
    """One line for `simulate`'s text output."""
    pruned = f", FFN channels pruned {info['structured_sparsity']:.0%} (ffn_dim {info['ffn_dim']})" \
        if info["structured_sparsity"] else ""
    return (f"weights: {info['weight_bits']}-bit, {info['weight_bytes_per_param']:.3f} bytes per parameter, "
            f"{info['weights_bytes'] / 1e9:.1f} GB for the whole model's {info['n_params'] / 1e9:.2f}B "
            f"parameters (what inference holds before the KV cache){pruned}")
