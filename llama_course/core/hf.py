"""Hugging Face interop: the course's LLaMA as transformers' LlamaForCausalLM folder, and back.

Local folders only (config.json + *.safetensors, no download). `to_hf(model, path)` writes what
`transformers.LlamaForCausalLM.from_pretrained(path)` loads; `from_hf(path)` builds our Transformer from such a
folder (tests/test_model.py holds both to transformers' own model on the same weights). Dense LLaMA only:
GPT and mixtures of experts have other layouts in transformers.
"""

from __future__ import annotations

import json
import os

from llama_course.core.model import Transformer
from simulator.config import ModelConfig

_HF_LAYER = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def _to_hf_name(name: str) -> str:
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        for ours, theirs in _HF_LAYER.items():
            if rest.startswith(ours + "."):
                return f"model.layers.{i}.{theirs}{rest[len(ours):]}"
    return {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}[name]


def hf_config(cfg: ModelConfig, max_seq_len: int) -> dict:
    """The config.json of transformers' LlamaConfig for this shape."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.dim // cfg.n_heads,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }


def to_hf(model: Transformer, path: str) -> None:
    """Write a folder that transformers.LlamaForCausalLM.from_pretrained(path) loads (config + safetensors)."""
    from safetensors.torch import save_file

    if model.cfg.arch != "llama":
        raise ValueError("to_hf: only arch 'llama' maps onto transformers' Llama")
    if model.cfg.n_experts:
        raise ValueError("to_hf: a mixture of experts does not map onto transformers' Llama (Mixtral's layout differs)")
    os.makedirs(path, exist_ok=True)
    state = {}
    for name, p in model.state_dict().items():
        if name == "output.weight" and model.cfg.tie_embeddings:
            continue
        state[_to_hf_name(name)] = p.detach().contiguous().cpu()
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config(model.cfg, model.max_seq_len), f, indent=2)


def from_hf(path: str) -> Transformer:
    """Load a local Hugging Face Llama checkpoint folder (config.json + *.safetensors) into our model."""
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"from_hf: model_type {hf.get('model_type')!r} is not llama")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(f"from_hf: rope type {rope.get('rope_type')!r} is not supported (only default RoPE)")
    theta = hf.get("rope_theta") or rope.get("rope_theta") or 10000.0
    n_heads = hf["num_attention_heads"]
    cfg = ModelConfig(preset=None, arch="llama", dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                      n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                      ffn_dim=hf["intermediate_size"], vocab_size=hf["vocab_size"],
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                      norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta))
    if hf.get("head_dim", cfg.dim // n_heads) != cfg.dim // n_heads:
        raise ValueError("from_hf: head_dim != hidden_size / num_attention_heads is not supported")
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"from_hf: no .safetensors files in {path}")
    tensors = {}
    for name in files:
        tensors.update(load_file(os.path.join(path, name)))
    model = Transformer(cfg, max_seq_len=hf.get("max_position_embeddings", 2048))
    state = {}
    for name in model.state_dict():
        key = _to_hf_name(name)
        if key == "lm_head.weight" and key not in tensors:
            key = "model.embed_tokens.weight"
        state[name] = tensors[key]
    model.load_state_dict(state)
    return model
