"""The LLaMA model (and a GPT-style variant), written to be read and to be split.

LLaMA (Touvron et al. 2023) is a decoder-only transformer; what sets it apart from GPT-2/3:

    x ─ RMSNorm ─ attention(RoPE on q, k; grouped-query k/v heads) ─(+)─ RMSNorm ─ SwiGLU MLP ─(+)─>
    │                                                              │ │                           │
    └──────────────────────────────────────────────────────────────┘ └───────────────────────────┘

- RMSNorm instead of LayerNorm: y = x / sqrt(mean(x^2) + eps) * g  (no mean subtraction, no bias);
- rotary position embeddings (RoPE) rotate q and k by position instead of adding learned positions;
- SwiGLU MLP: w2(silu(w1 x) * w3 x), with ffn_dim about 8/3 d (so 3 matrices cost what GPT's 2 of 4d do);
- grouped-query attention (LLaMA 2 70B and LLaMA 3): n_kv_heads < n_heads, each k/v head serves
  n_heads / n_kv_heads query heads, shrinking the KV cache; n_kv_heads == n_heads is multi-head attention.

Layer names follow Meta's reference so that the tensor-parallel split is visible in them:
wq, wk, wv, w1, w3 are split by columns (output features), wo and w2 by rows (input features).
RoPE uses the "rotate half" layout of Hugging Face's Llama, so `core/hf.py`'s `from_hf`/`to_hf` copy weights as they are.

`model.n_experts` > 0 makes every block's MLP a mixture of experts (router + E FeedForwards, core/moe.py).

`arch: gpt` builds the GPT-2/3 block (LayerNorm with bias, GELU MLP of width ffn_dim, learned positions,
biases, tied head) so Megatron-LM's published GPT runs can be compared with the same code.

Parameter count and FLOPs come from the torch-free `simulator.workload`, which a test holds against this
module. Launch: `llama-course train configs/tiny.yaml` trains it; `llama-course generate CKPT --prompt ...`
samples with the KV cache below.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from llama_course.core import weight_grad
from llama_course.core.moe import MoEFeedForward
from llama_course.core.quantization import empty_quantized
from simulator.config import ModelConfig

# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose matmul goes through weight_grad.linear: F.linear, or,
    under a zero-bubble pipeline step, the backward that defers its weight gradient (core/weight_grad.py),
    and in FP8 once `fp8` is switched on (training.fp8, core/fp8.py)."""

    fp8 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return weight_grad.linear(x, self.weight, self.bias, self.fp8)


def _compute_rope(seq_len: int, head_dim: int, theta: float, device) -> tuple:
    # fp32, as Hugging Face's Llama computes them, so logits agree with it
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)   # (s, hd/2)
    angles = torch.cat([angles, angles], dim=-1)                                   # (s, hd)
    return angles.cos(), angles.sin()


@lru_cache(maxsize=16)
def _rope_tables(seq_len: int, head_dim: int, theta: float, device: str) -> tuple:
    return _compute_rope(seq_len, head_dim, theta, device)


def rope_tables(seq_len: int, head_dim: int, theta: float, device) -> tuple:
    """cos and sin of position x frequency, shape (seq_len, head_dim), cached per shape and device
    (computed in the graph under torch.compile, which cannot trace the cache)."""
    if torch.compiler.is_compiling():
        return _compute_rope(seq_len, head_dim, float(theta), device)
    return _rope_tables(seq_len, head_dim, float(theta), str(device))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) by position-dependent angles: x*cos + rotate_half(x)*sin.

    x: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim). The dot product q_m . k_n then depends
    only on m - n, which is what makes RoPE a relative position encoding.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with grouped-query k/v heads (n_kv_heads divides n_heads).

    q = x wq: (b, s, n_heads*hd); k, v = x wk, x wv: (b, s, n_kv_heads*hd); each k/v head is repeated
    n_heads/n_kv_heads times, softmax(q k^T / sqrt(hd)) v runs through scaled_dot_product_attention
    (flash kernels on GPU), and wo maps the heads back to d. Tensor parallelism splits the heads:
    n_heads and n_kv_heads here are the local counts of this rank.
    """

    def __init__(self, cfg: ModelConfig, n_heads: int | None = None, n_kv_heads: int | None = None):
        super().__init__()
        self.n_heads = n_heads or cfg.n_heads
        self.n_kv_heads = n_kv_heads or cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.rope = cfg.arch == "llama"
        self.theta = cfg.rope_theta
        bias = cfg.arch == "gpt"
        hd = self.head_dim
        self.wq = Linear(cfg.dim, self.n_heads * hd, bias=bias)
        self.wk = Linear(cfg.dim, self.n_kv_heads * hd, bias=bias)
        self.wv = Linear(cfg.dim, self.n_kv_heads * hd, bias=bias)
        self.wo = Linear(self.n_heads * hd, cfg.dim, bias=bias)
        self.cache_k = self.cache_v = None

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        b, s, _ = x.shape
        hd = self.head_dim
        q = self.wq(x).view(b, s, -1, hd).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, hd).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, hd).transpose(1, 2)
        if self.rope:
            cos, sin = rope_tables(start_pos + s, hd, self.theta, x.device)
            cos, sin = cos[start_pos:], sin[start_pos:]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache_k is not None:                      # generation: append to the KV cache
            self.cache_k[:b, :, start_pos:start_pos + s] = k
            self.cache_v[:b, :, start_pos:start_pos + s] = v
            k = self.cache_k[:b, :, :start_pos + s]
            v = self.cache_v[:b, :, :start_pos + s]
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if start_pos == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:                                             # decoding after a prefill: see every cached key
            mask = torch.ones(s, start_pos + s, dtype=torch.bool, device=x.device).tril(start_pos)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """LLaMA: w2(silu(w1 x) * w3 x) (SwiGLU). GPT: w2(gelu(w1 x)). w1, w3 column-split; w2 row-split."""

    def __init__(self, cfg: ModelConfig, ffn_dim: int | None = None):
        super().__init__()
        f = ffn_dim or cfg.ffn_dim
        self.gated = cfg.arch == "llama"
        bias = cfg.arch == "gpt"
        self.w1 = Linear(cfg.dim, f, bias=bias)
        self.w2 = Linear(f, cfg.dim, bias=bias)
        self.w3 = Linear(cfg.dim, f, bias=False) if self.gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))


def make_norm(cfg: ModelConfig) -> nn.Module:
    return RMSNorm(cfg.dim, cfg.norm_eps) if cfg.arch == "llama" else nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)


class TransformerBlock(nn.Module):
    """x + attention(norm(x)), then h + feed_forward(norm(h)) (pre-norm residual block)."""

    def __init__(self, cfg: ModelConfig, layer_id: int = 0):
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = make_norm(cfg)
        self.attention = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.feed_forward = FeedForward(cfg) if not cfg.n_experts else MoEFeedForward(   # core/moe.py
            cfg, Linear(cfg.dim, cfg.n_experts, bias=False), [FeedForward(cfg) for _ in range(cfg.n_experts)])

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

class Transformer(nn.Module):
    """tok_embeddings -> layers -> norm -> output. `model(tokens)` returns logits (batch, seq, vocab)."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int = 2048):
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embeddings = nn.Embedding(max_seq_len, cfg.dim) if cfg.arch == "gpt" else None
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.output = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; the residual projections wo, w2 scaled by 1/sqrt(2 n_layers); an untied output
        head Normal(0, 1/sqrt(dim)) (torchtitan's LLaMA init), so the first logits have unit scale (a tied head
        is the embedding, and stays at 0.02, as GPT-2).

        Why the head is not at 0.02 (measured on `make demo`'s run, lr 3e-3 after 20 warmup steps;
        benchmarks/demo_loss_spike.py replays it): at 0.02 the logits start 8x smaller than the log-probabilities
        of the unigram distribution the model learns first, so the head has to grow (its norm 3.6 -> 5.7 in 22
        steps) while every position's last hidden state becomes the same small vector (rms about 0.3) whose
        direction alone, after the final RMSNorm, sets the logits. Adam moves every weight by about lr per step
        whatever the gradient, and at the peak lr one step flipped that direction: the most frequent tokens
        became the least likely and the loss jumped from 5.3 to 8.4 at step 23, worse than uniform (ln 512 = 6.24).
        No single tensor's update did it; clipping, beta2 or eps did not prevent it; a smaller lr or a longer
        warmup did, by learning slower. With the head at 1/sqrt(dim) the last hidden state keeps what differs
        between positions (the rms of its mean over positions is 0.04-0.05 of 0.06-0.08 at steps 21-26, against
        0.40 of 0.40 at step 21 before), the loss falls without a spike (4.60 at step 26, against 5.27) and
        ends lower after 400 steps (tests/test_demo.py)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layers))
            elif name == "output.weight" and not self.cfg.tie_embeddings:
                nn.init.normal_(p, 0.0, self.cfg.dim ** -0.5)
            else:
                nn.init.normal_(p, 0.0, std)

    def embed(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        if self.pos_embeddings is not None:
            pos = torch.arange(start_pos, start_pos + tokens.shape[1], device=tokens.device)
            h = h + self.pos_embeddings(pos)
        return h

    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        h = self.embed(tokens, start_pos)
        for layer in self.layers:
            h = layer(h, start_pos)
        return self.output(self.norm(h))

    # ---- generation ---------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_len: int) -> None:
        """Allocate a KV cache of max_len positions per layer (n_kv_heads heads: GQA shrinks it)."""
        p = self.output.weight
        for layer in self.layers:
            att = layer.attention
            shape = (batch, att.n_kv_heads, max_len, att.head_dim)
            att.cache_k = torch.zeros(shape, dtype=p.dtype, device=p.device)
            att.cache_v = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.cache_k = layer.attention.cache_v = None

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.8,
                 top_k: int | None = 50, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample max_new_tokens after `tokens` (batch, s) with a KV cache: one prefill, then one token a step."""
        b, s = tokens.shape
        total = min(s + max_new_tokens, self.max_seq_len)
        self.setup_cache(b, total)
        try:
            logits = self(tokens, 0)[:, -1]
            out = [tokens]
            pos = s
            while pos < total:
                nxt = sample(logits, temperature, top_k, generator)
                out.append(nxt)
                if pos + 1 >= total:
                    break
                logits = self(nxt, pos)[:, -1]
                pos += 1
            return torch.cat(out, dim=1)
        finally:
            self.clear_cache()


def sample(logits: torch.Tensor, temperature: float, top_k: int | None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token (batch, 1): greedy at temperature 0, else softmax(logits / T) over the top k."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def build_model(cfg, seed: int | None = None) -> Transformer:
    """The model of a full Config (cfg.model, cfg.seq_len), initialised from cfg.training.seed."""
    seed = cfg.training.seed if seed is None else seed
    torch.manual_seed(seed)
    return Transformer(cfg.model, max_seq_len=max(cfg.seq_len, 16))


def num_params(model: nn.Module) -> int:
    """Parameters, tied ones counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every token of the batch, computed in fp32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def model_from_state(cfg, state: dict, compression: dict | None = None) -> nn.Module:
    """An empty model shaped like `state` (a model.pt state dict), ready for load_state_dict.

    The shapes are read from the tensors themselves, so a pruned or quantized model, or one fine-tuned
    from it by `train` (whose checkpoints carry no `compression` section), rebuilds without help: wq's
    rows give each block's query heads, wk's its k/v heads, w1's the FFN width; a `qweight` (int8, or
    uint8 holding two int4) and its `scale` (one column per group) mark a quantized matrix.
    Called by checkpoint.load_model."""
    model = Transformer(cfg.model, max_seq_len=max(cfg.seq_len, 16))
    hd = cfg.model.dim // cfg.model.n_heads
    for i, layer in enumerate(model.layers):
        rows = {name: _out_features(state, f"layers.{i}.{name}") for name in
                ("attention.wq", "attention.wk", "feed_forward.w1")}
        if None in rows.values():
            continue
        a, k, f = rows["attention.wq"] // hd, rows["attention.wk"] // hd, rows["feed_forward.w1"]
        if (a, k) != (layer.attention.n_heads, layer.attention.n_kv_heads):
            layer.attention = Attention(cfg.model, n_heads=a, n_kv_heads=k)
        if f != layer.feed_forward.w1.out_features:
            layer.feed_forward = FeedForward(cfg.model, ffn_dim=f)
    for key, q in state.items():
        if key.endswith(".qweight"):
            name = key[: -len(".qweight")]
            bits = 8 if q.dtype == torch.int8 else 4
            in_f = q.shape[1] * (1 if bits == 8 else 2)
            empty_quantized(model, bits, in_f // state[name + ".scale"].shape[1], [name])
    model.compression = compression
    return model


def _out_features(state: dict, name: str) -> int | None:
    t = state.get(name + ".weight", state.get(name + ".qweight"))
    return None if t is None else t.shape[0]
