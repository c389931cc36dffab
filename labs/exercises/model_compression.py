"""Exercises for lab 12, model compression: quantize, prune, distill, and what each really saves.

Compression makes a trained model cheaper to *hold and serve*: int8 / int4 weights cut memory and memory
traffic (not FLOPs: weights are dequantized for a floating-point matmul), unstructured pruning zeroes
weights (same shapes, same dense FLOPs), structured pruning removes whole channels (fewer FLOPs), and
distillation trains a smaller student on the teacher's soft outputs.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only model_compression      # or: pytest tests/exercises/test_model_compression.py

Theory: docs/concepts/model_compression.md; runtime: llama_course/core/quantization.py, pruning.py,
distillation.py (`llama-course compress`); cost model: simulator/model_compression.py.
"""

from __future__ import annotations


def quantize_int8(w) -> tuple:
    """Exercise 12.1: symmetric int8 quantization of a 2-D torch weight (out x in), one scale per output row.

    s_o = max_i |w_oi| / 127 (an all-zero row: use scale 1), q_oi = round(w_oi / s_o) clamped to [-127, 127],
    q a torch.int8 tensor of w's shape, scale a float32 tensor of shape (out, 1). Dequantized, q x s is
    within s_o / 2 of every weight (round to nearest). Return (q, scale). Raise ValueError for a
    tensor that is not 2-D.
    """
    raise NotImplementedError("Exercise 12.1: quantize_int8")


def magnitude_prune(w, sparsity: float):
    """Exercise 12.2: unstructured magnitude pruning; return a pruned copy of the torch tensor w.

    Zero the k = round(sparsity x numel) weights of smallest |w| (exactly k of them, even with ties),
    keep the others unchanged. The result has the same shape and, for a dense matmul, the same FLOPs:
    zeros are only faster with sparse kernels (or 2:4 sparsity on recent GPUs). Do not modify w.
    Raise ValueError unless 0 <= sparsity <= 1.
    """
    raise NotImplementedError("Exercise 12.2: magnitude_prune")


def distillation_loss(student_logits, teacher_logits, targets, temperature: float = 2.0, alpha: float = 0.5):
    """Exercise 12.3: Hinton et al.'s distillation loss (a scalar torch tensor).

        alpha T^2 KL(softmax(z_T / T) || softmax(z_S / T)) + (1 - alpha) CE(targets, z_S)

    Logits are (..., vocab), targets (...) class indices; KL and CE are means over the positions (the
    KL summed over the vocabulary at each position). T^2 keeps the soft term's gradient the same size
    whatever T: the softened gradients shrink as 1/T^2. T = 1, alpha = 0 is plain cross-entropy.
    """
    raise NotImplementedError("Exercise 12.3: distillation_loss")


def inference_weight_bytes(n_params: float, bits: int, group_size: int = 64) -> float:
    """Exercise 12.4: bytes to hold a model's weights at `bits` per weight, with fp16 scales.

        16   2 bytes per weight
        8    1 byte per weight, plus one fp16 scale per output row: count it as 2 / group_size bytes per weight
        4    half a byte per weight, plus one fp16 scale per group of `group_size` weights
    (llama2-70b: 138 GB in bf16, 36.7 GB in int4 with groups of 64.) What inference holds before the KV
    cache. Training keeps fp32 master weights and Adam moments (12 of 16 bytes per parameter), which
    quantizing the weights does not touch. Raise ValueError for other bit widths.
    """
    raise NotImplementedError("Exercise 12.4: inference_weight_bytes")


def quantized_all_gather(shard, group=None) -> tuple:
    """Exercise 12.5: all-gather weight shards in int8 (ZeRO++'s quantized weights), on every rank at once.

    Each rank holds `shard`, a float32 (rows x cols) slice of a weight (equal shapes on every rank).
    Quantize it per row with exercise 12.1, all-gather the int8 values and the float32 scales
    (`dist.all_gather` into lists), dequantize and concatenate along dim 0 in rank order. Return
    (full weight, bytes this rank sent): each rank sends its int8 values and scales to the n - 1 others
    in a ring all-gather, so (n - 1)/n of the gathered bytes, about 1/4 of a float32 all-gather. The
    graded test records what your calls hand to torch.distributed, so the int8 must really travel as int8.
    """
    raise NotImplementedError("Exercise 12.5: quantized_all_gather")
