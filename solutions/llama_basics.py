"""Reference solutions for lab 01, llama_basics (labs/exercises/llama_basics.py has the exercises)."""

from __future__ import annotations

OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}


def _block_matmul_params(dim, n_heads, n_kv_heads, ffn_dim):
    kv_dim = n_kv_heads * (dim // n_heads)
    return 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * ffn_dim


def llama_params(dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, tie_embeddings=False):
    """Exercise 1.1."""
    block = _block_matmul_params(dim, n_heads, n_kv_heads, ffn_dim) + 2 * dim
    head = 0 if tie_embeddings else vocab_size * dim
    return vocab_size * dim + n_layers * block + dim + head


def train_flops_per_token(dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, seq_len):
    """Exercise 1.2."""
    per_layer = 2 * _block_matmul_params(dim, n_heads, n_kv_heads, ffn_dim) + 4 * seq_len * dim
    forward = n_layers * per_layer + 2 * vocab_size * dim
    return 3.0 * forward


def training_state_bytes(n_params, precision, optimizer):
    """Exercise 1.3."""
    if optimizer not in OPTIMIZER_STATES or precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision/optimizer {precision!r}/{optimizer!r}")
    states = 4.0 * OPTIMIZER_STATES[optimizer]
    if precision == "fp32":
        per = {"params": 4.0, "grads": 4.0, "optimizer": states}
    else:
        per = {"params": 2.0, "grads": 2.0, "optimizer": states + 4.0}
    out = {k: n_params * v for k, v in per.items()}
    out["total"] = sum(out.values())
    return out


def throughput_metrics(step_time_s, global_batch_size, seq_len, flops_per_token, n_devices, peak_flops):
    """Exercise 1.4."""
    if step_time_s <= 0 or n_devices < 1 or peak_flops <= 0:
        raise ValueError("step time, devices and peak must be positive")
    tokens_per_s = global_batch_size * seq_len / step_time_s
    flops = flops_per_token * tokens_per_s
    return {"tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / n_devices,
            "model_flops_per_s": flops, "mfu": flops / (n_devices * peak_flops)}


def pack_documents(documents, seq_len, eot_id):
    """Exercise 1.5."""
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    stream = []
    for doc in documents:
        stream.extend(int(t) for t in doc)
        stream.append(eot_id)
    width = seq_len + 1
    return [stream[i: i + width] for i in range(0, len(stream) - width + 1, width)]


def shard_batch(global_batch, dp_rank, dp, micro_batch_size):
    """Exercise 1.6."""
    g = len(global_batch)
    if dp < 1 or not 0 <= dp_rank < dp or micro_batch_size < 1 or g % dp or (g // dp) % micro_batch_size:
        raise ValueError("the global batch does not split into dp x micro-batches, or dp_rank is out of range")
    per = g // dp
    mine = list(global_batch[dp_rank * per: (dp_rank + 1) * per])
    return [mine[i: i + micro_batch_size] for i in range(0, per, micro_batch_size)]


def global_mean_loss(loss_sum, n_tokens, group=None):
    """Exercise 1.7: one all-reduce of [sum, count]."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(loss_sum), float(n_tokens)], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t[0] / t[1])
