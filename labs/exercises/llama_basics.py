"""Exercises for lab 01, llama_basics: what a LLaMA model costs, and how its data reaches it.

A LLaMA block is a decoder-only transformer block: RMSNorm, attention with rotary position embeddings and
(LLaMA 2 70B, LLaMA 3) grouped-query attention, RMSNorm, SwiGLU MLP. Everything distributed training has
to move or store follows from four counts: parameters, FLOPs per token, bytes per parameter of training
state, and the sequences each rank reads. The lab (labs/01_llama_basics.ipynb) measures each of them on
the `tiny` model; here you derive them.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only llama_basics      # or: pytest tests/exercises/test_llama_basics.py

`simulator/workload.py` and `llama_course/core/data.py` hold the course's own versions: read them after you try.
"""

from __future__ import annotations


def llama_params(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int, vocab_size: int,
                 tie_embeddings: bool = False) -> int:
    """Exercise 1.1: the number of parameters of a LLaMA model.

    Per block: wq and wo are dim x dim; wk and wv are dim x kv_dim with kv_dim = n_kv_heads x (dim / n_heads)
    (grouped-query attention shares each k/v head among n_heads / n_kv_heads query heads); the SwiGLU MLP has
    three matrices w1, w3 (dim x ffn_dim) and w2 (ffn_dim x dim); two RMSNorm weight vectors of dim (no
    biases anywhere). Outside the blocks: the token embedding (vocab x dim), a final RMSNorm (dim) and the
    output head (vocab x dim), which is the embedding itself when `tie_embeddings`. RoPE has no parameters.
    LLaMA-7B (dim 4096, 32 layers, 32 heads, ffn 11008, vocab 32000) has 6,738,415,616.
    """
    raise NotImplementedError("Exercise 1.1: llama_params")


def train_flops_per_token(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int,
                          vocab_size: int, seq_len: int) -> float:
    """Exercise 1.2: model FLOPs to train on one token (forward + backward, no recomputation).

    A matmul with a weight of k x n applied to one token costs 2 k n FLOPs (a multiply and an add per
    weight). Attention adds, per layer and token, the scores q k^T and the weighted sum of v: 2 x 2 x
    seq_len x dim (counted over the full seq_len x seq_len square, as Megatron-LM and PaLM count, even with
    a causal mask). The output head is one more matmul (dim x vocab); norms, RoPE, softmax and the
    embedding look-up are left out (they are memory-bound and small). Backward costs twice the forward.
    This is the familiar 6 N + 12 l s d, with N the matmul weights (head included).
    """
    raise NotImplementedError("Exercise 1.2: train_flops_per_token")


def training_state_bytes(n_params: float, precision: str, optimizer: str) -> dict:
    """Exercise 1.3: bytes of weights, gradients and optimizer state on one device with no sharding.

    Return {"params", "grads", "optimizer", "total"} in bytes. `precision` is fp32 | bf16 | fp16;
    `optimizer` is sgd (one momentum buffer) | adamw (two moments). In fp32 every tensor is 4 bytes per
    element. In mixed precision (bf16/fp16) weights and gradients are 2 bytes, and the optimizer keeps an
    fp32 master copy of the weights (4 bytes) beside its fp32 states: for AdamW that is the ZeRO paper's
    2 + 2 + 12 = 16 bytes per parameter. Activations are not part of this. Raise ValueError for anything
    else.
    """
    raise NotImplementedError("Exercise 1.3: training_state_bytes")


def throughput_metrics(step_time_s: float, global_batch_size: int, seq_len: int, flops_per_token: float,
                       n_devices: int, peak_flops: float) -> dict:
    """Exercise 1.4: the metrics every training log shows (seed questions 13 and 23).

    Return {"tokens_per_s", "tokens_per_s_per_device", "model_flops_per_s", "mfu"}: a step trains
    global_batch_size sequences of seq_len tokens; model FLOP/s is flops_per_token x tokens/s; MFU (model
    FLOPs utilisation, PaLM 2022) is that over the peak of all the devices together. MFU counts the
    model's FLOPs only: recomputed activations do not raise it (that is HFU, hardware FLOPs utilisation).
    Raise ValueError for a non-positive step time, device count or peak.
    """
    raise NotImplementedError("Exercise 1.4: throughput_metrics")


def pack_documents(documents: list, seq_len: int, eot_id: int) -> list:
    """Exercise 1.5: pack tokenized documents into training rows, as `llama_course.core.data` does.

    Join the documents (lists of token ids) into one stream, each followed by `eot_id`; cut the stream into
    non-overlapping windows of seq_len + 1 tokens (inputs are row[:-1], targets row[1:]); drop the tail
    that does not fill a window. Nothing is padded. Return a list of rows (lists of ints). Raise ValueError
    for seq_len < 1.
    """
    raise NotImplementedError("Exercise 1.5: pack_documents")


def shard_batch(global_batch: list, dp_rank: int, dp: int, micro_batch_size: int) -> list:
    """Exercise 1.6: data-parallel rank `dp_rank`'s micro-batches of one step's global batch.

    Rank r takes the contiguous slice [r G/dp, (r + 1) G/dp) of the G sequence indices in `global_batch`
    and cuts it into micro-batches of `micro_batch_size` (gradient accumulation runs them one after the
    other). Return a list of lists. Raise ValueError when G does not split into dp x micro-batches, or
    dp_rank is not in [0, dp). Every rank can compute this locally: sharding the data sends no bytes.
    """
    raise NotImplementedError("Exercise 1.6: shard_batch")


def global_mean_loss(loss_sum: float, n_tokens: int, group=None) -> float:
    """Exercise 1.7: the loss every layout must log: the mean over all tokens of the global batch.

    Each data-parallel rank knows the sum of its per-token cross-entropies (`loss_sum`) over its `n_tokens`
    tokens. Return, on every rank, total loss / total tokens over the group (a torch.distributed group;
    None = the default group). Averaging the ranks' own means instead is wrong as soon as ranks hold
    different numbers of tokens (load balancing, the last batch of an epoch, masked padding): the graded
    test gives its 2 gloo ranks different token counts. One all-reduce of a 2-element tensor
    [loss_sum, n_tokens] does it; use float64 so the result matches a one-process computation exactly.
    """
    raise NotImplementedError("Exercise 1.7: global_mean_loss")
