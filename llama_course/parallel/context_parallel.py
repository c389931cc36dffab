"""Context parallelism (Llama 3's all-gather form): one sequence split over the c ranks of a cp group.

Every op of a block but attention works token by token, so each rank runs it on its s/c tokens. Rank r
holds chunks r and 2c - 1 - r of the 2c chunks of every sequence (inputs and targets alike; the engine
keeps them, `local_batch`), so a causal mask gives every rank the same work. Attention needs the keys of
every earlier token: after the q/k/v projections and RoPE (at the tokens' GLOBAL positions), the ranks
all-gather K and V along the sequence (context_parallel_comm.py; backward: a reduce-scatter of dK, dV)
and each rank's queries attend to all s keys under the mask k_pos <= q_pos:

    c = 2, s = 8 in chunks of 2: rank 0 holds positions 0 1 | 6 7, rank 1 holds 2 3 | 4 5

                      keys 0 1 2 3 4 5 6 7   (gathered: every rank holds all 8, in global order)
        rank 0   query 0   x . . . . . . .
                 query 1   x x . . . . . .
                 query 6   x x x x x x x .
                 query 7   x x x x x x x x   18 scores
        rank 1   query 2   x x x . . . . .
                 query 3   x x x x . . . .
                 query 4   x x x x x . . .
                 query 5   x x x x x x . .   18 scores

    Q_r = x_r Wq, K_r, V_r = x_r Wk, x_r Wv   rotated at positions p_r     (b, heads, s/c, hd)
    K, V = all-gather_r (K_r, V_r)            in global order             (b, kv heads, s, hd)
    O_r = softmax(Q_r K^T / sqrt(hd) + mask(p_r >= k_pos)) V, then O_r Wo

The loss is each rank's mean over its own tokens; the c ranks hold equal token counts and average their
gradients with the data-parallel ranks (the replicas, dp x c), so the averaged gradient is the gradient of
the whole sequence's mean: the backward's reduce-scatter hands each rank the dK, dV every rank's queries
produced for its keys. Per block and micro-batch a rank hands one all-gather of its b s/c 2 kv_dim/t
elements to the cp group forward, and one reduce-scatter of the whole b s 2 kv_dim/t backward.

As a model transform (`ContextParallel`) it composes with the course's tensor parallelism (applied first:
the attention it wraps already holds the tp rank's heads; under sequence parallelism the block's input
is s/(c t) tokens and attention sees the rank's s/c after the tp all-gather), activation checkpointing
(the gather runs again in a recomputed forward) and the pipeline (stages exchange (b, s/c, h)
activations: pipeline_parallel.py takes shapes from the micro-batch). GPT's learned position table is
read at the global positions too (`GlobalPositions`).

    llama-course train configs/tiny.yaml --set parallel.cp=2 cluster.num_gpus=2
    llama-course train configs/tiny.yaml --set parallel.cp=2 parallel.tp=2 parallel.sequence_parallel=true cluster.num_gpus=4
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llama_course.core.distributed import all_reduce_mean
from llama_course.core.engine_protocol import ModelTransform
from llama_course.core.model import apply_rope, rope_tables
from llama_course.parallel.context_parallel_comm import gather_sequence, local_positions, shard_sequence


class ContextParallelAttention(nn.Module):
    """model.Attention on one cp rank (same submodules, so the same parameter names): its queries at their
    global positions attend to the K and V of the whole sequence, gathered over the cp group."""

    def __init__(self, att: nn.Module, group, cp: int, cp_rank: int):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = att.wq, att.wk, att.wv, att.wo
        self.n_heads, self.n_kv_heads, self.head_dim = att.n_heads, att.n_kv_heads, att.head_dim
        self.rope, self.theta = att.rope, att.theta
        self.group, self.cp, self.cp_rank = group, cp, cp_rank

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        if start_pos:
            raise ValueError("context parallelism trains whole sequences: no KV cache, start_pos must be 0")
        b, s, _ = x.shape
        hd, seq = self.head_dim, s * self.cp
        pos = local_positions(seq, self.cp, self.cp_rank, x.device)            # global positions of my tokens
        q = self.wq(x).view(b, s, -1, hd).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, hd).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, hd).transpose(1, 2)
        if self.rope:
            cos, sin = rope_tables(seq, hd, self.theta, x.device)
            cos, sin = cos[pos], sin[pos]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = context_parallel_attention(q, k, v, pos, self.group)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, group):
    """Causal attention of this rank's queries (b, heads, s/c, hd) at global positions `pos` over the keys
    and values of the whole sequence: this rank's k, v (b, kv heads, s/c, hd) all-gathered over `group`."""
    kv_heads = k.shape[1]
    kv = gather_sequence(torch.cat([k, v], dim=1), group, dim=2)           # one all-gather: (b, 2 kv, s, hd)
    k, v, seq = kv[:, :kv_heads], kv[:, kv_heads:], kv.shape[2]
    groups = q.shape[1] // kv_heads
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    mask = pos.unsqueeze(1) >= torch.arange(seq, device=q.device).unsqueeze(0)      # k_pos <= q_pos
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class GlobalPositions(nn.Embedding):
    """GPT's learned position table (the same parameter) on a cp rank: local index i reads the row of the
    global position of the rank's i-th token."""

    def __init__(self, table: nn.Embedding, cp: int, cp_rank: int):
        super().__init__(table.num_embeddings, table.embedding_dim, device="meta")
        self.weight = table.weight
        self.cp, self.cp_rank = cp, cp_rank

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        s = index.shape[-1]
        return F.embedding(local_positions(s * self.cp, self.cp, self.cp_rank, index.device)[index], self.weight)


def _blocks(model: nn.Module) -> list:
    layers = model.layers
    return list(layers.values() if isinstance(layers, nn.ModuleDict) else layers)


class ContextParallel(ModelTransform):
    """The model transform: every block's attention gathers K and V over ctx.cp_group, the position table
    reads global positions, the engine keeps this rank's chunks of each micro-batch, and a held-out loss
    is averaged over the cp group (equal token counts: the mean of the ranks' means is the whole mean)."""

    name = "context_parallel"

    def __init__(self, ctx):
        self.ctx = ctx

    def apply(self, model: nn.Module) -> nn.Module:
        c = self.ctx
        for block in _blocks(model):
            block.attention = ContextParallelAttention(block.attention, c.cp_group, c.cp, c.cp_rank)
        if getattr(model, "pos_embeddings", None) is not None:
            model.pos_embeddings = GlobalPositions(model.pos_embeddings, c.cp, c.cp_rank)
        return model

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        c = self.ctx
        return shard_sequence(x, c.cp, c.cp_rank, dim=1), shard_sequence(y, c.cp, c.cp_rank, dim=1)

    def mean_eval_loss(self, loss: float) -> float:
        return all_reduce_mean(loss, self.ctx.cp_group, self.ctx.device)
