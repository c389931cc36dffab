"""The spec both engines share: ranks and their groups, the model's parameter tensors, the gradient bucket
plan, and the names of trace events. Torch-free: the runtime (llama_course/) imports it, the simulator
uses it, so a fact written here has one value on both sides.

Ranks form a (pp, dp, tp) grid with tp fastest, as Megatron-LM lays them out, so a tensor-parallel group is
t neighbouring ranks (one node) and pipeline stages are the farthest apart:

    rank = (pp_rank * dp + dp_rank) * tp + tp_rank

    dp=2, tp=2, pp=2:   stage 0: [0 1] [2 3]     stage 1: [4 5] [6 7]
                        dp groups {0,2} {1,3} {4,6} {5,7};  tp groups {0,1} {2,3} {4,5} {6,7};  pp groups {0,4} ...

Context parallelism (`parallel.cp`) adds no grid dimension of its own: its c ranks are the fastest c of the
data-parallel dimension, which then counts replicas = dp x c (torchtitan's dp_shard_cp). They hold the same
weights and average their gradients like data-parallel ranks, so every dp group above is a group of dp x c
replicas; `cp_groups` are the c consecutive replicas that share one sequence (`cp_chunks`):

    dp=2, cp=2, tp=1:   replicas 0 1 2 3;  cp groups {0,1} {2,3};  data shards 0 0 1 1;  dp group {0,1,2,3}

Parameters: `parameters(model, seq_len)` lists model.py's `named_parameters()` (name, shape), in
registration order, tied weights once; tests/test_spec.py holds it to the torch model for every arch.
`shard_shape` is a parameter's shape on one tensor-parallel rank.

Gradient buckets (`bucket_plan`): walking the parameters in reverse registration order (about the order
backward produces their gradients), a bucket is closed when the next tensor would take it past
`parallel.bucket_mb` MiB (2^20 bytes); the first bucket is at most 1 MiB, as PyTorch DDP does, so
communication starts early in backward; bucket_mb 0 is one tensor per bucket.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# ranks and groups
# ---------------------------------------------------------------------------------------------

GROUP_KINDS = ("dp", "tp", "pp")


def coords(rank: int, dp: int, tp: int, pp: int) -> tuple:
    """(pp_rank, dp_rank, tp_rank) of a global rank in the (pp, dp, tp) grid."""
    return rank // (dp * tp), (rank // tp) % dp, rank % tp


def rank_of(pp_rank: int, dp_rank: int, tp_rank: int, dp: int, tp: int) -> int:
    """The global rank at grid coordinates (pp_rank, dp_rank, tp_rank)."""
    return (pp_rank * dp + dp_rank) * tp + tp_rank


def groups(kind: str, dp: int, tp: int, pp: int) -> list:
    """Every group of one kind (dp | tp | pp) as lists of global ranks, in the order the runtime creates
    them (every rank must call new_group for every group, in one order)."""
    if kind == "dp":
        return [[rank_of(p, d, t, dp, tp) for d in range(dp)] for p in range(pp) for t in range(tp)]
    if kind == "tp":
        return [[rank_of(p, d, t, dp, tp) for t in range(tp)] for p in range(pp) for d in range(dp)]
    if kind == "pp":
        return [[rank_of(p, d, t, dp, tp) for p in range(pp)] for d in range(dp) for t in range(tp)]
    raise ValueError(f"group kind must be one of {GROUP_KINDS}, got {kind!r}")


def group_of(kind: str, rank: int, dp: int, tp: int, pp: int) -> list:
    """The global ranks of `rank`'s group of one kind."""
    p, d, t = coords(rank, dp, tp, pp)
    if kind == "dp":
        return [rank_of(p, i, t, dp, tp) for i in range(dp)]
    if kind == "tp":
        return [rank_of(p, d, i, dp, tp) for i in range(tp)]
    if kind == "pp":
        return [rank_of(i, d, t, dp, tp) for i in range(pp)]
    raise ValueError(f"group kind must be one of {GROUP_KINDS}, got {kind!r}")


def cp_coords(replica: int, cp: int) -> tuple:
    """(data shard, cp rank) of a replica index (the dp coordinate of `coords` when replicas = dp x cp)."""
    return divmod(replica, cp)


def consecutive_replicas(replicas: int, tp: int, pp: int, size: int) -> list:
    """Every group of `size` consecutive replicas as lists of global ranks, in the order the runtime creates
    them: for each pipeline stage, group of replicas and tensor rank (context and expert parallelism)."""
    return [[rank_of(p, d * size + c, t, replicas, tp) for c in range(size)]
            for p in range(pp) for d in range(replicas // size) for t in range(tp)]


def cp_groups(replicas: int, tp: int, pp: int, cp: int) -> list:
    """Every context-parallel group: the cp consecutive replicas of one data shard."""
    return consecutive_replicas(replicas, tp, pp, cp)


def ep_groups(replicas: int, tp: int, pp: int, ep: int, expert_data: bool = False) -> list:
    """Every expert-parallel group as lists of global ranks, in the order the runtime creates them: the ep
    consecutive replicas that split the experts (replica i is ep rank i mod ep), for each pipeline stage,
    group of ep replicas and tensor rank. expert_data: the "expert data-parallel" groups instead, the
    replicas holding the same experts (stride ep), over which expert gradients are summed:

        replicas 0 1 2 3, ep 2:   ep groups {0,1} {2,3};  expert data-parallel groups {0,2} {1,3}
    """
    if expert_data:
        return [[rank_of(p, d * ep + e, t, replicas, tp) for d in range(replicas // ep)]
                for p in range(pp) for e in range(ep) for t in range(tp)]
    return consecutive_replicas(replicas, tp, pp, ep)


def cp_chunks(seq_len: int, cp: int, cp_rank: int) -> list:
    """[(start, end)] positions of the sequence a context-parallel rank holds: the sequence cut in 2 cp equal
    chunks, rank r takes chunk r and chunk 2 cp - 1 - r, so under a causal mask every rank has the same
    attention work (the head-tail load balancing of Llama 3 and torch's context_parallel). cp 1: the whole
    sequence."""
    if cp == 1:
        return [(0, seq_len)]
    n = seq_len // (2 * cp)
    return [(cp_rank * n, (cp_rank + 1) * n), ((2 * cp - 1 - cp_rank) * n, (2 * cp - cp_rank) * n)]


# ---------------------------------------------------------------------------------------------
# parameter tensors
# ---------------------------------------------------------------------------------------------

def block_parameters(model, layer: int = 0) -> list:
    """(name, shape) of one transformer block, in registration order (model.py's TransformerBlock)."""
    d, hd = model.dim, model.dim // model.n_heads
    q, kv = model.n_heads * hd, model.n_kv_heads * hd
    gpt = model.arch == "gpt"
    pre = f"layers.{layer}."

    def norm(name):
        return [(pre + name + ".weight", (d,))] + ([(pre + name + ".bias", (d,))] if gpt else [])

    def linear(name, out, inp, bias=gpt):
        return [(pre + name + ".weight", (out, inp))] + ([(pre + name + ".bias", (out,))] if bias else [])

    def mlp(prefix):
        return _mlp_parameters(model, layer, prefix)

    out = norm("attention_norm")
    out += linear("attention.wq", q, d) + linear("attention.wk", kv, d) + linear("attention.wv", kv, d)
    out += linear("attention.wo", d, q)
    out += norm("ffn_norm")
    if getattr(model, "n_experts", 0):           # mixture of experts: the router, then every expert's MLP
        out += linear("feed_forward.gate", model.n_experts, d, bias=False)
        for e in range(model.n_experts):
            out += mlp(f"feed_forward.experts.{e}.")
        return out
    return out + mlp("feed_forward.")


def _mlp_parameters(model, layer: int, prefix: str) -> list:
    """(name, shape) of one MLP (a dense block's or one expert's): w1, w2 and, LLaMA, w3."""
    d, f, gpt = model.dim, model.ffn_dim, model.arch == "gpt"
    pre = f"layers.{layer}.{prefix}"
    out = [(pre + "w1.weight", (f, d))] + ([(pre + "w1.bias", (f,))] if gpt else [])
    out += [(pre + "w2.weight", (d, f))] + ([(pre + "w2.bias", (d,))] if gpt else [])
    if not gpt:
        out.append((pre + "w3.weight", (f, d)))
    return out


def tensors_per_block(model) -> int:
    """Parameter tensors of one block: 9 for LLaMA (2 norms, 7 matrices), 16 for GPT (biases, LayerNorms)."""
    return len(block_parameters(model))


def parameters(model, seq_len: int) -> list:
    """(name, shape) of every parameter of the whole model, in model.py's registration order; a tied
    output head is the embedding (listed once, as named_parameters() does)."""
    d, v = model.dim, model.vocab_size
    out = [("tok_embeddings.weight", (v, d))]
    if model.arch == "gpt":
        out.append(("pos_embeddings.weight", (max(seq_len, 16), d)))
    for i in range(model.n_layers):
        out += block_parameters(model, i)
    out.append(("norm.weight", (d,)))
    if model.arch == "gpt":
        out.append(("norm.bias", (d,)))
    if not model.tie_embeddings:
        out.append(("output.weight", (v, d)))
    return out


COLUMN_SPLIT = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
"""Column-parallel layers: their weight rows (output features) and biases are split over tp."""
ROW_SPLIT = ("attention.wo", "feed_forward.w2")
"""Row-parallel layers: their weight columns (input features) are split; the bias is replicated."""


def shard_dim(name: str) -> int | None:
    """Which dim of full parameter `name` tensor parallelism splits (None: replicated on every tp rank)."""
    if name in ("tok_embeddings.weight", "output.weight"):
        return 0                                             # vocabulary rows
    for layer in COLUMN_SPLIT:
        if f".{layer}." in f".{name}":
            return 0                                         # output features (weight rows, bias)
    for layer in ROW_SPLIT:
        if name.endswith(f"{layer}.weight"):
            return 1                                         # input features
    return None


def shard_shape(name: str, shape: tuple, tp: int) -> tuple:
    """The shape of parameter `name` on one of tp tensor-parallel ranks (validation makes tp divide it)."""
    dim = shard_dim(name)
    if dim is None or tp == 1:
        return tuple(shape)
    return tuple(n // tp if i == dim else n for i, n in enumerate(shape))


def stage_parameters(model, seq_len: int, layer_ids, first: bool, last: bool, tp: int = 1) -> list:
    """(name, shape on one tp rank) of a pipeline stage: its blocks, the embedding(s) on the first stage,
    the final norm and the head on the last (one stage holding everything is the whole model)."""
    ids = {f"layers.{i}." for i in layer_ids}
    out = []
    for name, shape in parameters(model, seq_len):
        if name.startswith("layers."):
            keep = name[:name.index(".", 7) + 1] in ids
        elif name.startswith(("tok_embeddings.", "pos_embeddings.")):
            keep = first
        else:
            keep = last
        if keep:
            out.append((name, shard_shape(name, shape, tp)))
    return out


def stage_tensor_numels(model, seq_len: int, n_blocks: int, first: bool, last: bool, tp: int = 1) -> list:
    """Elements of each parameter tensor of a stage of n_blocks blocks on one tp rank, in registration
    order: `stage_parameters`' sizes without building the whole model's list (fast for 126-layer models)."""
    d, v = model.dim, model.vocab_size
    block = [numel(shard_shape(n, s, tp)) for n, s in block_parameters(model)]
    out = []
    if first:
        out.append(v // tp * d)
        if model.arch == "gpt":
            out.append(max(seq_len, 16) * d)
    out += block * n_blocks
    if last:
        out += [d] * (2 if model.arch == "gpt" else 1)
        if not (model.tie_embeddings and first):
            out.append(v // tp * d)
    return out


def stage_tensor_backward_work(model, seq_len: int, n_blocks: int, first: bool, last: bool, tp: int = 1) -> list:
    """The backward work each of `stage_tensor_numels`' tensors waits for before its gradient exists, in the same
    order: its elements for a weight a matmul uses (its backward is 4 x tokens x elements FLOPs, its share of
    the stage's), 0 for a lookup table (the token and GPT position embeddings: a scatter-add of the tokens'
    gradients, computed last and in no time); a table tied to the head on this stage keeps the head's work."""
    out = stage_tensor_numels(model, seq_len, n_blocks, first, last, tp)
    if first:
        tied = model.tie_embeddings and last
        out[0] = out[0] if tied else 0
        if model.arch == "gpt":
            out[1] = 0
    return out


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ---------------------------------------------------------------------------------------------
# gradient buckets
# ---------------------------------------------------------------------------------------------

BUCKET_UNIT_BYTES = 2 ** 20
"""parallel.bucket_mb counts MiB (as DDP's bucket_cap_mb does), on both engines."""
FIRST_BUCKET_BYTES = 2 ** 20
"""The first bucket closes at 1 MiB (DDP's first bucket), so communication starts early in backward."""


def bucket_plan(tensor_bytes: list, bucket_mb: float) -> list:
    """Buckets as lists of indices into `tensor_bytes`, which lists gradient tensors in the order backward
    produces them (reverse registration order). A bucket closes when the next tensor would take it past
    its cap: 1 MiB for the first, bucket_mb MiB after; bucket_mb 0: one tensor per bucket."""
    cap = bucket_mb * BUCKET_UNIT_BYTES
    buckets, current, size = [], [], 0
    for i, nbytes in enumerate(tensor_bytes):
        limit = min(cap, FIRST_BUCKET_BYTES) if not buckets else cap
        if current and (cap <= 0 or size + nbytes > limit):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


# ---------------------------------------------------------------------------------------------
# trace names
# ---------------------------------------------------------------------------------------------

STREAMS = ("compute", "comm", "bubble")
"""Chrome trace `tid`s: what a rank computes, what it communicates, and where a pipeline rank idles."""
COMPUTE_EVENTS = ("forward", "backward", "recompute", "optimizer")
COMM_EVENTS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "send", "recv", "all_to_all", "rpc")
"""Communication spans are named by the collective they run: the same keys as comm_bytes (docs/design.md)."""


def gradient_sync_event(zero_stage: int) -> str:
    """The collective a data-parallel gradient sync runs: all-reduce (ZeRO-0/1, whose course engine
    all-reduces and steps its shard), reduce-scatter (ZeRO-2/3)."""
    return "all_reduce" if zero_stage <= 1 else "reduce_scatter"
