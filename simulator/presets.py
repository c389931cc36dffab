"""Named model shapes. A preset is a function of nothing that returns the model fields (torchtitan style).

LLaMA (and Mixtral) shapes are from the papers and the released `params.json` files; GPT shapes are GPT-3 (Brown et al.
2020) and the Megatron-LM 2021 Table 1 models (vocabulary padded to 51,200). `tiny` and `small` are for CPU.
"""

from __future__ import annotations


def _llama(dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, rope_theta=10000.0, norm_eps=1e-5):
    return dict(arch="llama", dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                ffn_dim=ffn_dim, vocab_size=vocab_size, rope_theta=rope_theta, norm_eps=norm_eps,
                tie_embeddings=False)


def _gpt(dim, n_layers, n_heads, vocab_size=51200):
    return dict(arch="gpt", dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
                ffn_dim=4 * dim, vocab_size=vocab_size, norm_eps=1e-5, tie_embeddings=True)


def tiny():
    """4 layers, dim 64, GQA 4:2, vocab 512: every CPU layout (tp 2, pp 2 x vpp 2, dp 4) in milliseconds."""
    return _llama(64, 4, 4, 2, 192, 512)


def small():
    """8 layers, dim 256, GQA 8:4, vocab 4096: about 7M parameters, a real model for CPU demos and GPU checks."""
    return _llama(256, 8, 8, 4, 688, 4096)


def model_1b():
    """A ~1.1B-parameter LLaMA (TinyLlama shape: 22 layers of dim 2048, GQA 32:4) for single-GPU MFU checks."""
    return _llama(2048, 22, 32, 4, 5632, 32000)


MODEL_PRESETS = {
    "tiny": tiny,
    "small": small,
    "llama-1b": model_1b,
    "llama-7b": lambda: _llama(4096, 32, 32, 32, 11008, 32000, norm_eps=1e-6),
    "llama-13b": lambda: _llama(5120, 40, 40, 40, 13824, 32000, norm_eps=1e-6),
    "llama-33b": lambda: _llama(6656, 60, 52, 52, 17920, 32000, norm_eps=1e-6),
    "llama-65b": lambda: _llama(8192, 80, 64, 64, 22016, 32000, norm_eps=1e-5),
    "llama2-7b": lambda: _llama(4096, 32, 32, 32, 11008, 32000),
    "llama2-13b": lambda: _llama(5120, 40, 40, 40, 13824, 32000),
    "llama2-70b": lambda: _llama(8192, 80, 64, 8, 28672, 32000),
    "llama3-8b": lambda: _llama(4096, 32, 32, 8, 14336, 128256, rope_theta=500000.0),
    "llama3-70b": lambda: _llama(8192, 80, 64, 8, 28672, 128256, rope_theta=500000.0),
    "llama3-405b": lambda: _llama(16384, 126, 128, 8, 53248, 128256, rope_theta=500000.0),
    # Mixtral 8x7B (Jiang et al. 2024): Mistral 7B's blocks with 8 SwiGLU experts, top-2 routing;
    # 46.7B parameters, 12.9B active per token
    "mixtral-8x7b": lambda: dict(_llama(4096, 32, 32, 8, 14336, 32000, rope_theta=1e6), n_experts=8,
                                 experts_per_token=2),
    # GPT-3 family (Brown et al. 2020, Table 2.1); vocabulary 50,257 padded to 50,304 (a multiple of 128)
    # so it splits evenly over tensor-parallel ranks, as Megatron-LM and nanoGPT pad it
    "gpt3-125m": lambda: _gpt(768, 12, 12, 50304),
    "gpt3-1.3b": lambda: _gpt(2048, 24, 16, 50304),
    "gpt3-175b": lambda: _gpt(12288, 96, 96, 50304),
    # Megatron-LM 2021 Table 1 (Narayanan et al.)
    "gpt-1.7b": lambda: _gpt(2304, 24, 24),
    "gpt-3.6b": lambda: _gpt(3072, 30, 32),
    "gpt-7.5b": lambda: _gpt(4096, 36, 32),
    "gpt-18.4b": lambda: _gpt(6144, 40, 48),
    "gpt-39.1b": lambda: _gpt(8192, 48, 64),
    "gpt-76.1b": lambda: _gpt(10240, 60, 80),
    "gpt-145.6b": lambda: _gpt(12288, 80, 96),
    "gpt-310.1b": lambda: _gpt(16384, 96, 128),
    "gpt-529.6b": lambda: _gpt(20480, 105, 128),
    "gpt-1008b": lambda: _gpt(25600, 128, 160),
}


def model_preset(name: str) -> dict:
    """The model fields of a named preset."""
    return MODEL_PRESETS[name]()
