"""Tensor parallelism (Megatron-LM): every matmul of a block split over the t ranks of a tp group.

A block has two matmul pairs, and each pair needs one all-reduce forward and one backward:

    attention:  X ─f─> [X Wq_r, X Wk_r, X Wv_r]  heads n_heads/t, kv heads n_kv_heads/t on rank r
                        softmax(Q_r K_r^T) V_r ─> Y_r Wo_r ─g─> sum_r      Wo split by rows (input features)
    SwiGLU:     X ─f─> silu(X W1_r) * (X W3_r) ─> H_r W2_r ─g─> sum_r      W1, W3 columns, W2 rows

          W1 (h x f)                    W2 (f x h)
        ┌─────┬─────┐                 ┌───────────┐
        │ r0  │ r1  │  column split   │    r0     │  row split: Y = H_0 W2_0 + H_1 W2_1 (all-reduce)
        └─────┴─────┘                 ├───────────┤
                                      │    r1     │
                                      └───────────┘

Grouped-query attention splits query heads and kv heads alike; rank r keeps the kv heads its query heads
read (contiguous chunks keep head j with kv head j // (n_heads / n_kv_heads)), so tp must divide n_kv_heads.
The vocabulary is split too: the embedding table by rows (rank r owns tokens [r V/t, (r+1) V/t), a lookup
outside the range gives zeros, and an all-reduce adds the owners' rows), the head by columns, and the
cross-entropy runs on the (b, s, V/t) logit shards with three small all-reduces (max, sum of exp, target
logit): no rank ever holds the full (b, s, V) logits.

Cost per block, forward (backward the same again): 2 all-reduces of b s h elements; on a ring each moves
2 (t-1)/t b s h e bytes per rank. Weights, gradients and optimizer state per rank: about 1/t of the model.
Sequence parallelism (`parallel.sequence_parallel`) replaces each all-reduce by a reduce-scatter and an
all-gather along the sequence, the same bytes, and the norms and residual adds between the regions run on
s/t tokens: their activations shrink by t. Norm weights then see s/t tokens and their gradients are summed
over tp after backward.

In the engine (engine.py) tensor parallelism is a model transform: `TensorParallel` (course) or
`TorchTensorParallel` (DTensor) shards the model before the optimizer sees it; any gradient sync then
runs over the dp group on the shards (ZeRO-1/2 under tp: Megatron's distributed optimizer; FSDP2 with
torch's tp: torchtitan's 2-D layout).

Seed questions 1 and 9: model parallelism is not one thing. Tensor parallelism splits each layer (fast
links, every layer communicates); pipeline parallelism (pipeline_parallel.py) splits the layer stack.

    llama-course train configs/tiny.yaml --nproc 2 --set parallel.tp=2 cluster.num_gpus=2
    llama-course train configs/tiny.yaml --set parallel.tp=2 parallel.sequence_parallel=true
    llama-course train configs/tiny.yaml --set parallel.tp=2 parallel.implementation=torch   # DTensor
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from llama_course.core import weight_grad
from llama_course.core.distributed import device_mesh
from llama_course.core.engine_protocol import ModelTransform
from llama_course.core.model import Linear, Transformer
from llama_course.parallel.tensor_parallel_comm import (
    all_reduce_gradients,
    enter_region,
    exit_region,
    split_to_sp,
)
from simulator import spec

# ---------------------------------------------------------------------------------------------
# split layers
# ---------------------------------------------------------------------------------------------

COLUMN, ROW = spec.COLUMN_SPLIT, spec.ROW_SPLIT
shard_dim = spec.shard_dim
"""Which dim of full parameter `name` is split over tp (None: replicated): simulator/spec.py, shared with
the simulator's parameter and byte counts."""

class ColumnParallelLinear(Linear):
    """Y_r = X A_r: the rows of nn.Linear's weight (output features) [r out/t, (r+1) out/t).

    The input must already be in the parallel region (f or the sequence all-gather applied once by the
    block, so q, k and v share one all-reduce in backward). A model.Linear: its matmul goes through
    weight_grad.linear, so zero bubble defers its weight gradient.
    """

    @classmethod
    def from_full(cls, full: nn.Linear, rank: int, t: int) -> ColumnParallelLinear:
        w = full.weight.detach().chunk(t, 0)[rank]
        layer = cls(w.shape[1], w.shape[0], bias=full.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
            if full.bias is not None:
                layer.bias.copy_(full.bias.detach().chunk(t, 0)[rank])
        return layer


class RowParallelLinear(nn.Module):
    """Y = sum_r X_r A_r: weight columns (input features) [r in/t, (r+1) in/t); g (or reduce-scatter) after.

    The bias is added once, after the reduction (it is replicated; with sequence parallelism it sees s/t
    tokens and is marked for the tp gradient sum).
    """

    fp8 = False                     # training.fp8 switches it on (core/fp8.py)

    def __init__(self, full: nn.Linear, rank: int, t: int, group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = nn.Parameter(full.weight.detach().chunk(t, 1)[rank].clone())
        self.bias = nn.Parameter(full.bias.detach().clone()) if full.bias is not None else None
        if self.bias is not None and sequence_parallel:
            self.bias.sequence_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = exit_region(weight_grad.linear(x, self.weight, fp8=self.fp8), self.group, self.sequence_parallel)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Rows [r V/t, (r+1) V/t) of the table; tokens outside give zeros; g (or reduce-scatter) adds the rows."""

    def __init__(self, full: nn.Embedding, rank: int, t: int, group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = nn.Parameter(full.weight.detach().chunk(t, 0)[rank].clone())
        self.vocab_start = rank * self.weight.shape[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = tokens - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        h = F.embedding(local.masked_fill(outside, 0), self.weight)
        h = h.masked_fill(outside.unsqueeze(-1), 0.0)
        return exit_region(h, self.group, self.sequence_parallel)


class VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy from logit shards z_r (N, V/t) without gathering them:

        m = max_r max_j z_r[j]                 all-reduce MAX   (N floats)
        S = sum_r sum_j exp(z_r[j] - m)        all-reduce SUM   (N floats)
        z_y = the target's logit - m           all-reduce SUM   (N floats, only its owner adds non-zero)
        loss = log S - z_y
    backward: dL/dz_r = dloss * (softmax_r - onehot_r(y)), all local.
    """

    @staticmethod
    def forward(ctx, logits, targets, vocab_start, group):
        logits = logits.float()
        m = logits.max(-1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        z = logits - m.unsqueeze(-1)
        exp = z.exp()
        total = exp.sum(-1)
        dist.all_reduce(total, group=group)
        local = targets - vocab_start
        mine = (local >= 0) & (local < logits.shape[-1])
        local = local.masked_fill(~mine, 0)
        picked = z.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0.0)
        dist.all_reduce(picked, group=group)
        ctx.save_for_backward(exp.div_(total.unsqueeze(-1)), local, mine)
        return total.log() - picked

    @staticmethod
    def backward(ctx, dloss):
        softmax, local, mine = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local.unsqueeze(-1), -mine.to(grad.dtype).unsqueeze(-1))
        return grad * dloss.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int, group):
    """Mean cross-entropy over all tokens from (b, s, V/t) logit shards."""
    return VocabParallelCrossEntropy.apply(logits.flatten(0, 1), targets.flatten(), vocab_start, group).mean()


# ---------------------------------------------------------------------------------------------
# the split model
# ---------------------------------------------------------------------------------------------

class TensorParallelBlock(nn.Module):
    """The block of model.py on one tp rank: same submodule names, local heads and MLP width.

        x ─ norm ─ enter ─ attention(local heads) ─ wo (row, exit) ─(+)─ norm ─ enter ─ SwiGLU ─ w2 (row, exit) ─(+)
    """

    def __init__(self, block: nn.Module, rank: int, t: int, group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.attention_norm, self.ffn_norm = block.attention_norm, block.ffn_norm
        att = block.attention
        self.attention = att
        att.n_heads, att.n_kv_heads = att.n_heads // t, att.n_kv_heads // t
        for name in ("wq", "wk", "wv"):
            setattr(att, name, ColumnParallelLinear.from_full(getattr(att, name), rank, t))
        att.wo = RowParallelLinear(att.wo, rank, t, group, sequence_parallel)
        ff = self.feed_forward = block.feed_forward
        ff.w1 = ColumnParallelLinear.from_full(ff.w1, rank, t)
        if ff.w3 is not None:
            ff.w3 = ColumnParallelLinear.from_full(ff.w3, rank, t)
        ff.w2 = RowParallelLinear(ff.w2, rank, t, group, sequence_parallel)
        if sequence_parallel:
            for p in [*self.attention_norm.parameters(), *self.ffn_norm.parameters()]:
                p.sequence_parallel = True

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        enter = lambda a: enter_region(a, self.group, self.sequence_parallel)
        h = x + self.attention(enter(self.attention_norm(x)), start_pos)
        return h + self.feed_forward(enter(self.ffn_norm(h)))


class TensorParallelTransformer(nn.Module):
    """Transformer on one tp rank. forward(tokens) -> (b, s, V/t) logit shard; `loss` -> global mean CE.

    State-dict names are the full model's; `shard_dim(name)` tells how each one maps back.
    """

    def __init__(self, model: Transformer, group, sequence_parallel: bool = False):
        super().__init__()
        t, rank = dist.get_world_size(group), dist.get_rank(group)
        self.cfg, self.max_seq_len = model.cfg, model.max_seq_len
        self.group, self.sequence_parallel, self.tp, self.tp_rank = group, sequence_parallel, t, rank
        tied = model.cfg.tie_embeddings
        self.tok_embeddings = VocabParallelEmbedding(model.tok_embeddings, rank, t, group, sequence_parallel)
        self.pos_embeddings = model.pos_embeddings
        self.layers = nn.ModuleList(TensorParallelBlock(b, rank, t, group, sequence_parallel) for b in model.layers)
        self.norm = model.norm
        if sequence_parallel:
            for p in self.norm.parameters():
                p.sequence_parallel = True
        self.output = ColumnParallelLinear.from_full(model.output, rank, t)
        if tied:
            self.output.weight = self.tok_embeddings.weight
        self.vocab_start = rank * self.output.weight.shape[0]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        if self.pos_embeddings is not None:
            pos = self.pos_embeddings(torch.arange(tokens.shape[1], device=tokens.device)).unsqueeze(0)
            h = h + (split_to_sp(pos, self.group) if self.sequence_parallel else pos)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(enter_region(self.norm(h), self.group, self.sequence_parallel))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits, targets, self.vocab_start, self.group)


def shard_model(model: Transformer, group, sequence_parallel: bool = False) -> TensorParallelTransformer:
    """The tp-rank's part of a full model built identically on every rank (same seed): slices, no comms."""
    return TensorParallelTransformer(model, group, sequence_parallel)


def gather_full_tensor(name: str, local: torch.Tensor, group) -> torch.Tensor:
    """Concatenate a parameter's (or gradient's) shards over the tp group back into the full tensor."""
    dim = shard_dim(name)
    t = dist.get_world_size(group) if group is not None else 1
    if dim is None or t == 1:
        return local.detach().clone()
    parts = [torch.empty_like(local) for _ in range(t)]
    dist.all_gather(parts, local.detach().contiguous(), group=group)
    return torch.cat(parts, dim)


# ---------------------------------------------------------------------------------------------
# the model transforms the engine applies (engine.py chooses course or torch)
# ---------------------------------------------------------------------------------------------

class TensorParallel(ModelTransform):
    """implementation: course. The model is sharded before the optimizer sees it (1/t of the state); the
    loss is the vocabulary-parallel cross-entropy; sequence-parallel norm gradients are summed over tp."""

    name = "tensor_parallel"
    provides_loss = True

    def __init__(self, ctx, sequence_parallel: bool):
        self.ctx, self.sequence_parallel = ctx, sequence_parallel

    def apply(self, model: nn.Module) -> nn.Module:
        self.model = shard_model(model, self.ctx.tp_group, self.sequence_parallel)
        return self.model

    def loss(self, module, logits, targets):
        return vocab_parallel_cross_entropy(logits, targets, self.model.vocab_start, self.ctx.tp_group)

    def after_backward(self, model: nn.Module) -> None:
        if self.sequence_parallel:
            all_reduce_gradients([p for p in model.parameters() if getattr(p, "sequence_parallel", False)],
                                 self.ctx.tp_group, average=False)

    def splits(self, name: str, param) -> bool:
        return shard_dim(name) is not None

    def gather_full(self, ctx, named: dict) -> dict:
        return {n: t if hasattr(t, "placements") else gather_full_tensor(n, t, ctx.tp_group) for n, t in named.items()}


class TorchTensorParallel(ModelTransform):
    """implementation: torch. DTensor `parallelize_module` (ColwiseParallel / RowwiseParallel /
    SequenceParallel) on the tp dimension of the device mesh, and `loss_parallel` for the vocab-parallel
    cross-entropy, the plan torchtitan uses for LLaMA."""

    name = "torch_tensor_parallel"
    provides_loss = True

    def __init__(self, ctx, sequence_parallel: bool):
        # the capability table refuses tied embeddings here (DTensor's plan would untie them)
        self.ctx, self.sequence_parallel = ctx, sequence_parallel

    def apply(self, model: nn.Module) -> nn.Module:
        return parallelize_torch(model, device_mesh(self.ctx)["tp"], self.sequence_parallel)

    def loss(self, module, logits, targets):
        """Inside loss_parallel(): the logits are a DTensor sharded over the vocabulary."""
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def loss_context(self):
        return loss_parallel()


def parallelize_torch(model: Transformer, tp_mesh, sequence_parallel: bool) -> Transformer:
    """Apply torchtitan's LLaMA plan with DTensor. Works on a whole model or on a pipeline stage."""
    sp = sequence_parallel
    act = Shard(1) if sp else Replicate()
    top = {}
    if getattr(model, "tok_embeddings", None) is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=act)
    if getattr(model, "output", None) is not None:
        top["output"] = ColwiseParallel(input_layouts=act, output_layouts=Shard(-1), use_local_output=False)
        if sp:
            top["norm"] = SequenceParallel()
    if top:
        parallelize_module(model, tp_mesh, top)
    layers = model.layers.values() if isinstance(model.layers, nn.ModuleDict) else model.layers
    for block in layers:
        plan = {"attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(output_layouts=act),
                "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=act)}
        if sp:
            plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                         "attention": PrepareModuleInput(input_layouts=(Shard(1), None),
                                                         desired_input_layouts=(Replicate(), None)),
                         "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),),
                                                            desired_input_layouts=(Replicate(),))})
        parallelize_module(block, tp_mesh, plan)
    return model


