"""Workload: what one LLaMA or GPT model costs, in parameters and FLOPs, written once and torch-free.

The runtime's tests hold `count_params` against the real module; the simulator builds its compute and
memory model on the same functions.

Per token and layer, a forward pass costs 2 FLOPs per weight of every matmul plus attention
(QK^T and AV: 2 x 2 x s x d, counted over the full s x s square as Megatron-LM and PaLM do; a causal
FlashAttention kernel runs about half of them, which changes its time, not the count).
Backward costs twice the forward, so training costs 3 x forward = 6 N + 12 l s d per token. A mixture of
experts counts its active parameters for N (`active_matmul_params`: each token runs k of the E experts).
"""

from __future__ import annotations


def mlp_matmul_params(model) -> int:
    """Weights of one MLP's matmuls (a dense block's, or one expert's): w1, w3, w2 | fc, proj."""
    return (3 if model.arch == "llama" else 2) * model.dim * model.ffn_dim


def _attention_matmul_params(model) -> int:
    d = model.dim
    kv_dim = model.n_kv_heads * (d // model.n_heads)
    return d * d + 2 * d * kv_dim + d * d                        # wq, wk, wv, wo


def layer_matmul_params(model) -> int:
    """Weights of the matmuls of one block (attention projections and the MLP; a mixture of experts: the
    router, E x dim, and all E experts)."""
    e = getattr(model, "n_experts", 0)
    if e:
        return _attention_matmul_params(model) + e * model.dim + e * mlp_matmul_params(model)
    return _attention_matmul_params(model) + mlp_matmul_params(model)


def active_matmul_params(model) -> int:
    """Weights one token's forward multiplies in one block: all of them when dense; a mixture of experts:
    the attention, the router and the k experts it is sent to (what FLOPs and MFU count, as Mixtral's
    "active parameters" and DeepSeek's MFU do)."""
    e = getattr(model, "n_experts", 0)
    if e:
        return _attention_matmul_params(model) + e * model.dim + model.experts_per_token * mlp_matmul_params(model)
    return layer_matmul_params(model)


def layer_params(model) -> int:
    """All parameters of one block: matmuls, norms and (GPT) biases (a mixture of experts: every expert's)."""
    d, f = model.dim, model.ffn_dim
    if model.arch == "llama":
        return layer_matmul_params(model) + 2 * d                # two RMSNorm weights
    kv_dim = model.n_kv_heads * (d // model.n_heads)
    biases = (d + 2 * kv_dim) + d + max(1, getattr(model, "n_experts", 0)) * (f + d)   # qkv, proj, fc, mlp proj
    return layer_matmul_params(model) + biases + 4 * d           # two LayerNorms (weight + bias)


def expert_params(model) -> int:
    """Parameters of one block's E experts (weights and, GPT, biases; not the router): 0 when dense."""
    e = getattr(model, "n_experts", 0)
    bias = model.ffn_dim + model.dim if model.arch == "gpt" else 0
    return e * (mlp_matmul_params(model) + bias)


def count_params(model, seq_len: int = 0) -> int:
    """Total parameters. GPT's learned positions add seq_len x dim (pass seq_len); tied heads count once."""
    d, v = model.dim, model.vocab_size
    embed = v * d
    head = 0 if model.tie_embeddings else v * d
    final_norm = d if model.arch == "llama" else 2 * d
    positions = seq_len * d if model.arch == "gpt" else 0
    return embed + positions + model.n_layers * layer_params(model) + final_norm + head


def active_params(model, seq_len: int = 0) -> int:
    """Parameters one token uses: count_params less, per block, the E - k experts it is not sent to."""
    e = getattr(model, "n_experts", 0)
    unused = model.n_layers * expert_params(model) * (e - model.experts_per_token) // e if e else 0
    return count_params(model, seq_len) - unused


def forward_flops_per_token(model, seq_len: int) -> float:
    """Forward FLOPs for one token: matmuls (2 per active weight), attention scores and values, the head."""
    per_layer = 2 * active_matmul_params(model) + 4 * seq_len * model.dim
    return model.n_layers * per_layer + 2 * model.vocab_size * model.dim


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs for one token: forward + backward (2x forward), no recomputation counted."""
    return 3 * forward_flops_per_token(model, seq_len)


# ---------------------------------------------------------------------------------------------
# Per-op FLOPs and bytes of one block, on one GPU of a tensor-parallel group
# ---------------------------------------------------------------------------------------------
#
# Notation (Korthikanti et al. 2022): b micro-batch sequences, s sequence length, h hidden, a heads,
# t tensor-parallel degree, e bytes per element of the compute precision, f MLP width.
# A matmul (m x k) @ (k x n) costs 2 m k n FLOPs and moves e (m k + k n + m n) bytes.
# Element-wise ops (norms, softmax, GeLU/SwiGLU, dropout, residual adds) move bytes and are memory bound.
# Without sequence parallelism the norms, dropouts and residual adds run replicated on every TP rank;
# with it they run on s/t of the tokens.

from typing import NamedTuple  # noqa: E402

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


class Op(NamedTuple):
    """One kernel of a block's forward pass on one GPU."""

    name: str
    kind: str          # "matmul" | "memory" | "flash"
    flops: float       # forward FLOPs, as the model-FLOPs convention counts them
    bytes: float       # forward bytes read + written
    core: bool = False  # part of the attention core (scores, softmax, dropout, AV): selective recompute redoes it
    executed: float | None = None   # FLOPs the kernel really runs when not `flops` (causal attention skips
                                    # the masked tiles); what its time is priced on
    shape: tuple | None = None      # (batch, m, k, n) of a matmul: batch products of (m x k) @ (k x n),
                                    # for its efficiency (compute.gemm_efficiency); of a fused attention
                                    # (batch x heads, s, head dim, s)
    backward: bool = False          # the backward of a forward op (a matmul: its dgrad and wgrad products)
    fp8: bool = False               # a linear matmul run in FP8 (training.fp8): priced at the fp8 peak


FLASH_TILE = 128
"""Query/key tile of a fused attention kernel (FlashAttention-2's 128 x 128 blocks on A100/H100)."""


def causal_fraction(seq_len: int, tile: int = FLASH_TILE) -> float:
    """Share of the s x s score tiles a causal fused kernel computes: the n (n + 1) / 2 tiles on or below
    the diagonal of n = s / tile, (n + 1) / (2 n); 1 for a single tile, -> 1/2 for long sequences."""
    n = max(1, -(-seq_len // tile))
    return (n + 1) / (2 * n)


def cpu_query_tile(seq_len: int) -> int:
    """Query rows per block of PyTorch's CPU fused attention kernel (ATen's heuristic: 32, 64 from 192 query
    positions, 256 from 768); a causal block computes the keys up to its last row, so on a CPU the executed
    share of the square is causal_fraction(s, cpu_query_tile(s))."""
    return 256 if seq_len >= 768 else 64 if seq_len >= 192 else 32


def attention_scores(op: Op, cpu: bool = False) -> tuple:
    """(score elements a fused causal attention op computes, head dim) from its shape (batch x heads, s, hd, s):
    the tiles on and below the diagonal, FLASH_TILE on a GPU, the CPU kernel's query blocks on a CPU. A
    context-parallel rank's queries over the gathered keys (batch x heads, s/cp, hd, s) run with an explicit
    mask on a CPU, which computes every score; on a GPU its chunks skip 1/cp of the causal square's tiles."""
    bh, sq, hd, sk = op.shape
    if sq != sk:
        return bh * sq * sk * (1.0 if cpu else causal_fraction(sk)), hd
    return bh * sq * sq * causal_fraction(sq, cpu_query_tile(sq) if cpu else FLASH_TILE), hd


def uses_dropout(model) -> bool:
    """GPT-style training (Megatron, GPT-3) keeps dropout 0.1; LLaMA trains without it."""
    return model.arch == "gpt"


def _matmul(name, m, k, n, e, core=False):
    return Op(name, "matmul", 2.0 * m * k * n, e * (m * k + k * n + m * n), core, shape=(1, m, k, n))


def layer_ops(model, seq_len: int, micro_batch: int = 1, tp: int = 1, sequence_parallel: bool = False,
              precision: str = "bf16", flash: bool = True, cp: int = 1, ep: int = 1) -> list:
    """The forward kernels of one transformer block on one GPU, with FLOPs and bytes.

    Matmul FLOPs add up to (2 x active_matmul_params + 4 s h) per token / t, the count used by
    `forward_flops_per_token` (a router runs whole on every tp rank); element-wise ops add bytes only. With context parallelism (cp > 1) the GPU
    holds s/cp of the tokens: every op but attention runs on them, and attention takes its s/cp queries
    over the s gathered keys, 1/cp of the (load-balanced, context_parallel.py) causal square. A mixture of
    experts replaces the MLP by `moe_mlp_ops` (expert parallelism over `ep` ranks).
    """
    e = DTYPE_BYTES[precision]
    s, b, h, t = seq_len, micro_batch, model.dim, tp
    s_q = s // cp                                       # this GPU's queries (all of them without cp)
    tokens = b * s_q
    a_t = model.n_heads // t
    hd = model.dim // model.n_heads
    kv_t = model.n_kv_heads * hd // t
    f_t = model.ffn_dim // t
    rep = tokens / t if sequence_parallel else tokens   # tokens seen by replicated element-wise ops
    drop = uses_dropout(model)
    ops = [Op("norm_attn", "memory", 0.0, 2 * rep * h * e),
           _matmul("qkv", tokens, h, a_t * hd + 2 * kv_t, e)]
    if model.arch == "llama":
        ops.append(Op("rope", "memory", 0.0, 2 * tokens * (a_t * hd + kv_t) * e))
    if flash:
        # the model-FLOPs convention counts the full s x s square (Megatron-LM, PaLM); a causal fused kernel
        # skips the tiles above the diagonal, so its time is priced on causal_fraction of them
        fl = 4.0 * b * a_t * s_q * s * hd
        ops.append(Op("attention", "flash", fl, e * (tokens * 2 * a_t * hd + b * s * 2 * kv_t), True,
                      executed=fl * causal_fraction(s), shape=(b * a_t, s_q, hd, s)))
    else:
        sq = b * a_t * s_q * s                          # score elements on this GPU
        ops.append(Op("qkv_layout", "memory", 0.0, 2 * tokens * (a_t * hd + 2 * kv_t) * e))
        ops.append(Op("scores", "matmul", 2.0 * sq * hd, e * (2 * tokens * a_t * hd + sq), True,
                      shape=(b * a_t, s_q, hd, s)))
        ops.append(Op("softmax", "memory", 0.0, 2 * sq * e, True))
        if drop:
            ops.append(Op("attn_dropout", "memory", 0.0, sq * (2 * e + 1), True))
        ops.append(Op("attn_values", "matmul", 2.0 * sq * hd, e * (sq + 2 * tokens * a_t * hd), True,
                      shape=(b * a_t, s_q, s, hd)))
    ops.append(_matmul("attn_out", tokens, a_t * hd, h, e))
    ops.append(Op("residual_attn", "memory", 0.0, rep * h * (3 * e + (1 if drop else 0))))
    ops.append(Op("norm_mlp", "memory", 0.0, 2 * rep * h * e))
    if getattr(model, "n_experts", 0):
        ops += moe_mlp_ops(model, tokens, tp, e, ep)
    elif model.arch == "llama":
        ops.append(_matmul("mlp_gate_up", tokens, h, 2 * f_t, e))
        ops.append(Op("swiglu", "memory", 0.0, 3 * tokens * f_t * e))
    else:
        ops.append(_matmul("mlp_up", tokens, h, f_t, e))
        ops.append(Op("gelu", "memory", 0.0, 2 * tokens * f_t * e))
    if not getattr(model, "n_experts", 0):
        ops.append(_matmul("mlp_down", tokens, f_t, h, e))
    ops.append(Op("residual_mlp", "memory", 0.0, rep * h * (3 * e + (1 if drop else 0))))
    return ops


def moe_mlp_ops(model, tokens: float, tp: int = 1, e: int = 2, ep: int = 1) -> list:
    """The MLP of a mixture-of-experts block on one GPU of `tokens` tokens: the router (tokens x dim x E, on
    every tensor-parallel rank), the permute that gathers each token's k copies by expert, the experts, the
    unpermute that scatters them back weighted (memory bound: tokens k dim elements read and written each).

    Routing is assumed balanced (each expert gets k/E of the tokens; dropless). With expert parallelism the
    GPU holds E/ep experts and, after the dispatch all-to-all, runs them on the copies its ep group sent
    them: each expert tokens k ep / E rows, tokens k rows in all, as many as without ep (the model FLOPs of
    a step do not depend on ep) in fewer, larger GEMMs; one grouped GEMM of E/ep products (the shape's batch),
    each expert's ffn split over the tp ranks as a dense MLP's is."""
    h, f_t, n_e, k = model.dim, model.ffn_dim // tp, model.n_experts, model.experts_per_token
    local, rows = n_e // ep, tokens * k * ep / n_e           # experts on this GPU, rows of each
    copies = tokens * k                                      # routed token copies (= local * rows)

    def grouped(name, kk, n):
        return Op(name, "matmul", 2.0 * local * rows * kk * n, e * local * (rows * kk + kk * n + rows * n),
                  shape=(local, rows, kk, n))

    ops = [_matmul("router", tokens, h, n_e, e),
           Op("moe_permute", "memory", 0.0, 2 * copies * h * e)]
    if model.arch == "llama":
        ops += [grouped("mlp_gate_up", h, 2 * f_t), Op("swiglu", "memory", 0.0, 3 * copies * f_t * e)]
    else:
        ops += [grouped("mlp_up", h, f_t), Op("gelu", "memory", 0.0, 2 * copies * f_t * e)]
    return ops + [grouped("mlp_down", f_t, h), Op("moe_unpermute", "memory", 0.0, 2 * copies * h * e)]


def head_ops(model, seq_len: int, micro_batch: int = 1, tp: int = 1, precision: str = "bf16") -> list:
    """Final norm, vocabulary-parallel output head and cross-entropy (fp32 logits) of the last stage."""
    e = DTYPE_BYTES[precision]
    tokens = micro_batch * seq_len
    v_t = model.vocab_size // tp
    return [Op("final_norm", "memory", 0.0, 2 * tokens * model.dim * e),
            _matmul("output_head", tokens, model.dim, v_t, e),
            Op("cross_entropy", "memory", 0.0, tokens * v_t * (e + 3 * 4))]


def embedding_ops(model, seq_len: int, micro_batch: int = 1, tp: int = 1, precision: str = "bf16") -> list:
    """Embedding lookup (and GPT's learned positions) of the first stage: a gather, memory bound."""
    e = DTYPE_BYTES[precision]
    tokens = micro_batch * seq_len
    return [Op("embedding", "memory", 0.0, 2 * tokens * model.dim * e * (2 if model.arch == "gpt" else 1))]


def alternate_matmuls(model, seq_len: int, micro_batch: int = 1, tp: int = 1, precision: str = "bf16") -> list:
    """The block's linear matmuls that `selective_op` recomputes: the 2nd, 4th, ... in the order the runtime
    runs them (wq, wk, wv, wo, w1, [w3,] w2): wk, wo and w3 of a LLaMA block, wk, wo and w2 of a GPT block."""
    e = DTYPE_BYTES[precision]
    tokens = micro_batch * seq_len
    h, hd, t = model.dim, model.dim // model.n_heads, tp
    q_t, kv_t, f_t = model.n_heads * hd // t, model.n_kv_heads * hd // t, model.ffn_dim // t
    order = [("wq", h, q_t), ("wk", h, kv_t), ("wv", h, kv_t), ("wo", q_t, h), ("w1", h, f_t)]
    order += [("w3", h, f_t), ("w2", f_t, h)] if model.arch == "llama" else [("w2", f_t, h)]
    k_mlp = model.experts_per_token if getattr(model, "n_experts", 0) else 1    # an expert MLP: k copies/token
    return [_matmul(name, tokens * (k_mlp if name[0] == "w" and name[1].isdigit() else 1), k, n, e)
            for name, k, n in order[1::2]]


def fp8_ops(ops: list, precision: str) -> list:
    """`ops` with training.fp8: every linear matmul of the block (not the attention core) in FP8, each after
    a cast of its two operands (an amax read, then a read and a one-byte write per element: (2 e + 1) bytes,
    memory bound). Its backward quantizes the gradient twice and the operands again: priced as twice the
    forward's casts, as element-wise backwards are."""
    e = DTYPE_BYTES[precision]
    out = []
    for op in ops:
        if op.kind == "matmul" and not op.core:
            batch, m, k, n = op.shape                   # (a mixture of experts: batch experts' products)
            out.append(Op(f"fp8_cast_{op.name}", "memory", 0.0, (2 * e + 1) * batch * (m * k + k * n)))
            op = op._replace(fp8=True)
        out.append(op)
    return out


BACKWARD_FLOPS = {"matmul": 2.0, "memory": 0.0, "flash": 2.5}   # x forward; flash bwd recomputes QK^T
BACKWARD_BYTES = {"matmul": 2.0, "memory": 2.0, "flash": 2.5}


def backward_op(op: Op) -> Op:
    """The backward of a forward op: matmuls 2x FLOPs (input and weight gradients), element-wise 2x bytes."""
    f = BACKWARD_FLOPS[op.kind]
    return op._replace(flops=op.flops * f, bytes=op.bytes * BACKWARD_BYTES[op.kind],
                       executed=None if op.executed is None else op.executed * f, backward=True)


# ---------------------------------------------------------------------------------------------
# Activation memory of one block (Korthikanti et al. 2022, "Reducing Activation Recomputation")
# ---------------------------------------------------------------------------------------------

def activation_bytes_per_layer(model, seq_len: int, micro_batch: int = 1, tp: int = 1,
                               sequence_parallel: bool = False, recompute: str = "none",
                               flash: bool = False, precision: str = "fp16") -> float:
    """Bytes a block keeps for backward, per micro-batch, on one GPU.

    GPT with 16-bit activations and dropout reproduces Korthikanti's Table 2 exactly:
      none:      s b h (34 + 5 a s / h)                      (t = 1)
      tp:        s b h (10 + 24/t + 5 a s / (h t))
      tp + sp:   s b h (34/t + 5 a s / (h t))
      selective: drops the 5 a s / h term (scores are recomputed); so does a fused (flash) kernel, which
                 keeps its output once (the output projection's input) and a 4-byte log-sum-exp per row
      full:      2 s b h (the block input only; /t with sp)
      selective_op: selective's, less the outputs of the matmuls it recomputes (`alternate_matmuls`: K, and
                 LLaMA's w3 branch; wo's and w2's outputs are not among the bytes above), as measured in
                 tests/test_activation_checkpointing.py
    LLaMA: no dropout masks, K and V of n_kv_heads, SwiGLU keeps both branch outputs (3 x s b f).
    Mixture of experts: the MLP keeps the k routed copies of every token (k s b h) and the experts'
    intermediates of k s b f (x 3 SwiGLU, x 2 GeLU) in place of the dense MLP's.
    """
    e = DTYPE_BYTES[precision]
    s, b, h, t = seq_len, micro_batch, model.dim, tp
    sbh = s * b * h
    rep = 1.0 / t if sequence_parallel else 1.0   # replicated parts without sp
    if recompute == "full":
        return e * sbh * rep
    if recompute == "selective_op":     # selective's, less the outputs of the matmuls it recomputes (K, and the
        kept = activation_bytes_per_layer(model, seq_len, micro_batch, tp, sequence_parallel, "selective", flash,
                                          precision)                                         # SwiGLU up branch)
        kv = model.n_kv_heads / model.n_heads
        k_mlp = model.experts_per_token if getattr(model, "n_experts", 0) else 1
        return kept - e * sbh * kv / t - (e * s * b * k_mlp * model.ffn_dim / t if model.arch == "llama" else 0.0)
    drop = uses_dropout(model)
    kv = model.n_kv_heads / model.n_heads
    f = model.ffn_dim
    # attention: input of qkv (replicated), q, k, v, input of the output projection
    attn = e * sbh * rep + e * sbh * (1 + 2 * kv) / t + e * sbh / t
    if drop:
        attn += sbh * rep                        # dropout mask after the output projection (1 byte)
    if flash:
        attn += 4 * model.n_heads / t * s * b    # the kernel's fp32 log-sum-exp per row (its output is the
                                                 # input of the output projection, counted above)
    if not (flash or recompute == "selective"):
        sq = model.n_heads * s * s * b / t
        attn += e * sq + (sq * (1 + e) if drop else 0)   # softmax output; dropout mask + output
    if getattr(model, "n_experts", 0):
        # mixture of experts: the router's input, the k routed copies of each token, the experts' intermediates
        # (SwiGLU: 3 of ffn per copy, GeLU 2); the router's logits (E per token) are negligible
        k = model.experts_per_token
        mlp = e * sbh * rep + e * sbh * k * rep + (3 if model.arch == "llama" else 2) * e * s * b * k * f / t
        mlp += sbh * rep if drop else 0
    elif model.arch == "llama":
        mlp = e * sbh * rep + 3 * e * s * b * f / t
    else:
        mlp = e * sbh * rep + 2 * e * s * b * f / t + (sbh * rep if drop else 0)
    norms = 2 * e * sbh * rep
    return attn + mlp + norms


# ---------------------------------------------------------------------------------------------
# Weights, gradients and optimizer state, by precision and ZeRO stage (Rajbhandari et al. 2020)
# ---------------------------------------------------------------------------------------------

OPTIMIZER_STATES = {"sgd": 1, "adamw": 2, "lars": 1, "lamb": 2}   # fp32 tensors kept per parameter


def state_bytes_per_param(precision: str, optimizer: str, grad_dtype: str | None = None) -> dict:
    """Bytes per parameter of weights, gradients and optimizer state.

    Mixed precision (fp16/bf16): 2 + g + (4 master copy + 4 per optimizer state), with g the bytes of the
    gradient buffer: 2 when gradients are reduced in bf16/fp16 (Adam: 2 + 2 + 12 = 16, the ZeRO paper's
    K = 12), 4 when they are reduced in fp32 (`training.grad_reduce_dtype`, the default: Megatron-LM's fp32
    main gradients, 2 + 4 + 12 = 18 bytes, or 6 + 12/d with its distributed optimizer). fp32: 4 + 4 + 4 per
    state (the fp32 gradient whatever the reduction casts to). grad_dtype None: the compute precision's bytes.
    """
    k = 4 * OPTIMIZER_STATES[optimizer]
    if precision == "fp32":                     # p.grad is fp32 whatever dtype the reduction casts to
        return {"params": 4.0, "grads": 4.0, "optimizer": float(k)}
    return {"params": 2.0, "grads": float(DTYPE_BYTES[grad_dtype or precision]), "optimizer": float(k + 4)}


def state_bytes(n_params: float, precision: str, optimizer: str, zero_stage: int = 0, dp: int = 1,
                grad_dtype: str | None = None, expert_params: float = 0.0, ep: int = 1) -> dict:
    """Per-GPU bytes of weights, gradients and optimizer state for n_params on this GPU before ZeRO.

    ZeRO-1 shards optimizer state over dp, ZeRO-2 also gradients, ZeRO-3 (FSDP) also weights. Expert
    parallelism: `expert_params` of the n_params are experts, whose states ZeRO shards over the dp / ep
    replicas holding the same experts (the expert-data-parallel group): (n - x) / dp + x / (dp / ep) per GPU.
    """
    per = state_bytes_per_param(precision, optimizer, grad_dtype)
    shard = {"optimizer": zero_stage >= 1, "grads": zero_stage >= 2, "params": zero_stage >= 3}
    sharded = n_params + expert_params * (ep - 1)      # (n - x) / dp + x ep / dp = (n + x (ep - 1)) / dp
    return {k: (sharded if shard[k] else n_params) * v / (dp if shard[k] else 1) for k, v in per.items()}
