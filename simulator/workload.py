"""Workload: what one LLaMA or GPT model costs, in parameters and FLOPs, written once and torch-free.

The runtime's tests hold `count_params` against the real module; the simulator builds its compute and
memory model on the same functions.

Per token and layer, a forward pass costs 2 FLOPs per weight of every matmul plus attention
(QK^T and AV: 2 x 2 x s x d, counted over the full s x s square as Megatron-LM and PaLM do).
Backward costs twice the forward, so training costs 3 x forward = 6 N + 12 l s d per token.
"""

from __future__ import annotations


def layer_matmul_params(model) -> int:
    """Weights of the matmuls of one block (attention projections and the MLP)."""
    d, f = model.dim, model.ffn_dim
    kv_dim = model.n_kv_heads * (d // model.n_heads)
    attn = d * d + 2 * d * kv_dim + d * d                        # wq, wk, wv, wo
    mlp = 3 * d * f if model.arch == "llama" else 2 * d * f      # w1, w3, w2 | fc, proj
    return attn + mlp


def layer_params(model) -> int:
    """All parameters of one block: matmuls, norms and (GPT) biases."""
    d, f = model.dim, model.ffn_dim
    if model.arch == "llama":
        return layer_matmul_params(model) + 2 * d                # two RMSNorm weights
    kv_dim = model.n_kv_heads * (d // model.n_heads)
    biases = (d + 2 * kv_dim) + d + f + d                        # qkv, proj, fc, mlp proj
    return layer_matmul_params(model) + biases + 4 * d           # two LayerNorms (weight + bias)


def count_params(model, seq_len: int = 0) -> int:
    """Total parameters. GPT's learned positions add seq_len x dim (pass seq_len); tied heads count once."""
    d, v = model.dim, model.vocab_size
    embed = v * d
    head = 0 if model.tie_embeddings else v * d
    final_norm = d if model.arch == "llama" else 2 * d
    positions = seq_len * d if model.arch == "gpt" else 0
    return embed + positions + model.n_layers * layer_params(model) + final_norm + head


def forward_flops_per_token(model, seq_len: int) -> float:
    """Forward FLOPs for one token: matmuls (2 per weight), attention scores and values, the output head."""
    per_layer = 2 * layer_matmul_params(model) + 4 * seq_len * model.dim
    return model.n_layers * per_layer + 2 * model.vocab_size * model.dim


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs for one token: forward + backward (2x forward), no recomputation counted."""
    return 3 * forward_flops_per_token(model, seq_len)
