"""Communication bytes: what each rank hands to torch.distributed (and RPC) in each optimizer step.

A timing-free check that the two engines mean the same thing by a config: the simulator predicts, per rank
and step, the bytes of every kind of call from the same facts the runtime uses (simulator/spec.py: the
rank grid, the model's parameter tensors, the bucket plan; the pipeline schedule of pipeline_parallel.py);
`llama-course compare --json` reports them beside the bytes the wire recorder counted at the calls
(`predicted.comm_bytes`, `measured.comm_bytes`). Equal byte for byte, or one engine does something the
other does not.

Keys (docs/design.md, "comm_bytes"): all_reduce, reduce_scatter, all_gather, broadcast, send, recv,
all_to_all, rpc. A byte counts where the rank hands it over: an all-reduce's tensor, a reduce-scatter's
input, an all-gather's local input, a send's tensor, a receive's buffer, an RPC's tensor arguments.
The course's own collectives (data_parallel.py's gradient sync, ZeRO's gathers) are rings written on
point-to-point messages, so they count as send and recv; per ring step rank i sends one chunk and receives
another (collectives.py `chunk_sizes`: n // N elements, one more for the first n % N chunks):

    ring reduce-scatter   sends every chunk but its own,   n - c_i        receives all but chunk i-1
    ring all-gather       sends every chunk but chunk i+1, n - c_{i+1}    receives all but its own
    ring all-reduce       the two in a row

Predicted for the course's engines (single, data_parallel, tensor_parallel, pipeline_parallel,
parallel_3d, local_sgd, load_balancing, the parameter server's workers) on CPU, where every tensor is fp32,
and for torch DDP without compression (its Python all-reduce hook, core/wire.watch_ddp: one all-reduce of
every gradient, whatever DDP's buckets); the other torch implementations (FSDP2, DTensor,
torch.distributed.pipelining, DDP's compression hooks) communicate inside torch and are not predicted
(`unpredicted` says why). A mixture of experts without expert parallelism syncs like a dense model (every
expert runs, on zero tokens if need be); with it, the all-to-alls a rank hands over depend on the routing,
so only their sum over the ep group is predicted (`balanced_routing`: each rank as the group's mean).

    python -c "from simulator.comm_bytes import comm_bytes; from simulator.config import load_config; \\
        print(comm_bytes(load_config('configs/tiny.yaml', ['parallel.zero_stage=3']), steps=2))"
"""

from __future__ import annotations

from simulator import spec
from simulator.capabilities import engine_for
from simulator.pipeline_parallel import partition_layers, schedule_order

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "send", "recv", "all_to_all", "rpc")
FP32, FP64, INT32, INT64 = 4, 8, 4, 8
COURSE_ENGINES = ("single", "data_parallel", "tensor_parallel", "pipeline_parallel", "parallel_3d", "local_sgd",
                  "load_balancing", "parameter_server")


def empty() -> dict:
    return {k: 0 for k in KINDS}


def unpredicted(cfg, balanced_routing: bool = False) -> str | None:
    """Why comm_bytes(cfg) cannot be predicted, or None when it can (`balanced_routing`: see comm_bytes)."""
    engine = engine_for(cfg)
    p = cfg.parallel
    if engine == "ddp" and p.compression == "none" and cfg.training.grad_reduce_dtype == "fp32":
        return None
    if p.implementation == "torch" and engine != "single":
        return "implementation torch: FSDP2, DTensor, torch.distributed.pipelining and DDP's compression hooks " \
               "communicate inside torch"
    if engine not in COURSE_ENGINES:
        return f"engine {engine} is not modelled"
    if cfg.cluster.gpu != "cpu" and (p.tp > 1 or p.pp > 1 or p.ep > 1):
        return "activations under autocast on a GPU: their dtypes are not modelled (cpu runs are fp32)"
    if cfg.model.n_experts and p.ep > 1:
        if not balanced_routing:
            return ("expert parallelism: the combine all-to-all and the dispatch's backward hand over the rows this "
                    "rank's experts received, which the routing decides; only their sum over the ep group is known "
                    "(comm_bytes(cfg, balanced_routing=True) predicts every rank as the group's mean)")
    if cfg.load_balance.policy == "balanced_stages" and p.pp > 1:
        return "balanced_stages: the stage split is measured by the runtime"
    return None


def comm_bytes(cfg, steps: int | None = None, balanced_routing: bool = False) -> list:
    """`[rank][step] -> {kind: bytes}` for the ranks that train (parameter servers excluded), steps 1..steps
    (default training.steps). Raises ValueError when `unpredicted(cfg)` says why it cannot.
    `balanced_routing`: with expert parallelism, every expert receives k/E of the tokens, so every rank's
    all-to-alls are the ep group's mean (their sum over the group is exact whatever the routing)."""
    why = unpredicted(cfg, balanced_routing)
    if why:
        raise ValueError(f"comm_bytes: not predicted for this config ({why})")
    steps = cfg.training.steps if steps is None else steps
    p = cfg.parallel
    engine = engine_for(cfg)
    out = []
    for rank in range(cfg.replicas * p.tp * p.pp):
        if engine == "local_sgd":
            out.append([_local_sgd(cfg, rank, n) for n in range(1, steps + 1)])
        else:
            one = _step(cfg, engine, rank)
            if p.cp > 1:
                _context_parallel(cfg, rank, one)
            if p.ep > 1 and cfg.model.n_experts:
                _expert_parallel(cfg, rank, one)
            out.append([dict(one) for _ in range(steps)])
    return out


# ---------------------------------------------------------------------------------------------
# ring collectives on send/recv (collectives.py)
# ---------------------------------------------------------------------------------------------

def chunk_sizes(n: int, n_ranks: int) -> list:
    q, r = divmod(int(n), int(n_ranks))
    return [q + (1 if i < r else 0) for i in range(n_ranks)]


def ring(collective: str, n: int, n_ranks: int, i: int) -> tuple:
    """(elements sent, elements received) by group rank i in the course's ring `collective` of n elements."""
    if n_ranks <= 1:
        return 0, 0
    c = chunk_sizes(n, n_ranks)
    rs = (n - c[i], n - c[(i - 1) % n_ranks])
    ag = (n - c[(i + 1) % n_ranks], n - c[i])
    if collective == "reduce_scatter":
        return rs
    if collective == "all_gather":
        return ag
    return rs[0] + ag[0], rs[1] + ag[1]


def _add_ring(out: dict, collective: str, n: int, n_ranks: int, i: int, elem: int) -> None:
    sent, received = ring(collective, n, n_ranks, i)
    out["send"] += sent * elem
    out["recv"] += received * elem


# ---------------------------------------------------------------------------------------------
# one step of one rank
# ---------------------------------------------------------------------------------------------

def _step(cfg, engine: str, rank: int) -> dict:
    p = cfg.parallel
    out = empty()
    if engine == "single":
        return out
    if engine == "parameter_server":
        out["rpc"] = FP32 * _total(cfg)                  # the gradients pushed (replies are the servers')
        return out
    if engine == "data_parallel":
        return _data_parallel(cfg, rank, out)
    if engine == "ddp":                                  # every gradient once (DDP's buckets), then the loss
        out["all_reduce"] += FP32 * _total(cfg) + FP64
        return out
    if engine == "load_balancing":
        if cfg.load_balance.policy == "dynamic_batch":
            out["all_reduce"] += FP64 * p.dp             # every rank's measured speed
        return _data_parallel(cfg, rank, out, deferred=True)   # weighted gradients, reduced after backward
    return _model_parallel(cfg, rank, out)


def _total(cfg) -> int:
    return sum(spec.numel(s) for _, s in spec.parameters(cfg.model, cfg.seq_len))


def _local_sgd(cfg, rank: int, step: int) -> dict:
    out = empty()
    if cfg.parallel.dp > 1:
        out["all_reduce"] += 2 * FP64                    # the loss and the gradient norm, averaged for the log
        if step % cfg.parallel.local_steps == 0:
            out["all_reduce"] += FP32 * _total(cfg)      # the replicas' parameters, averaged
    return out


def _data_parallel(cfg, rank: int, out: dict, params: list | None = None, deferred: bool = False) -> dict:
    """data_parallel.py's DataParallelSync over `params` (the whole model, or a model-parallel rank's
    shard of it): buckets (ZeRO-0/1/2) or per-block units (ZeRO-3), the course's rings. `deferred`: the
    reduction waits for the end of backward and first agrees on unused parameters (one fp32 flag each)."""
    p = cfg.parallel
    n_ranks, z = cfg.replicas, p.zero_stage                          # dp x cp ranks average gradients
    i = spec.coords(rank, n_ranks, p.tp, p.pp)[1]
    if p.ep > 1:                                    # expert parallelism: the experts join no bucket (they are
        params = [(n, s) for n, s in (spec.parameters(cfg.model, cfg.seq_len) if params is None else params)
                  if ".experts." not in n]          # summed over the edp group, _expert_parallel)
    units = _dp_units(cfg, params)
    grad_elem = {"fp16": 2, "bf16": 2}.get(p.compression, FP32)
    if deferred and n_ranks > 1:
        out["all_reduce"] += FP32 * sum(len(unit) for unit in units)
    for unit in units:
        n = sum(spec.numel(s) for _, s in unit)
        if z <= 1:
            _compressed_all_reduce(cfg, out, unit, n, n_ranks, i)
        else:
            _add_ring(out, "reduce_scatter", n, n_ranks, i, grad_elem)
    if z >= 2 and n_ranks > 1:
        out["all_reduce"] += FP64                                     # the sharded gradient's norm
    if n_ranks > 1:
        out["all_reduce"] += FP64                                     # the loss, averaged over dp
    if z in (1, 2):
        for unit in units:                                            # every rank's updated shard
            _add_ring(out, "all_gather", sum(spec.numel(s) for _, s in unit), n_ranks, i, FP32)
    if z == 3:                          # per micro-batch: each block before its forward and again before its
        for unit in units:              # backward; the rest (embedding, norm, head) once, kept until backward ends
            gathers = 2 if unit[0][0].startswith("layers.") else 1
            for _ in range(cfg.grad_accum_steps * gathers):
                _add_ring(out, "all_gather", sum(spec.numel(s) for _, s in unit), n_ranks, i, FP32)
    if z >= 1 and cfg.training.optimizer in ("lars", "lamb"):
        n_params = sum(len(unit) for unit in units)
        for _ in range(2 * _nonempty_groups(units, n_ranks, i, z)):    # weight and update norms per group
            _add_ring(out, "all_reduce", n_params, n_ranks, i, FP64)
    return out


def _dp_units(cfg, params: list | None = None) -> list:
    """The data-parallel engine's units, each a list of (name, shape): the spec's bucket plan over the
    tensors in reverse registration order (ZeRO-0/1/2), or one unit per block, last first, then the rest."""
    params = spec.parameters(cfg.model, cfg.seq_len) if params is None else params
    if cfg.parallel.zero_stage < 3:
        order = list(reversed(params))
        plan = spec.bucket_plan([FP32 * spec.numel(s) for _, s in order], cfg.parallel.bucket_mb)
        return [[order[j] for j in ids] for ids in plan]
    units = []
    for layer in reversed(range(cfg.model.n_layers)):
        units.append([(n, s) for n, s in params if n.startswith(f"layers.{layer}.")])
    rest = [(n, s) for n, s in params if not n.startswith("layers.")]
    return units + ([rest] if rest else [])


def _nonempty_groups(units: list, n_ranks: int, i: int, z: int) -> int:
    """Optimizer groups (matrices with weight decay, vectors without) holding a piece of this rank's shard."""
    kinds = set()
    for unit in units:
        n = sum(spec.numel(s) for _, s in unit)
        lo = sum(chunk_sizes(n, n_ranks)[:i])
        hi = lo + chunk_sizes(n, n_ranks)[i]
        off = 0
        for _, shape in unit:
            a, b = max(off, lo), min(off + spec.numel(shape), hi)
            if a < b:
                kinds.add(len(shape) >= 2)
            off += spec.numel(shape)
    return len(kinds)


def _compressed_all_reduce(cfg, out: dict, unit: list, n: int, n_ranks: int, i: int) -> None:
    """communication_compression.py's all_reduce of one bucket."""
    p = cfg.parallel
    if n_ranks <= 1:
        return
    if p.compression in ("none", "fp16", "bf16"):
        _add_ring(out, "all_reduce", n, n_ranks, i, FP32 if p.compression == "none" else 2)
    elif p.compression == "topk":
        k = max(1, int(p.topk_ratio * n))                             # values (fp32) and indices (int32)
        _add_ring(out, "all_gather", k * n_ranks, n_ranks, i, FP32)
        _add_ring(out, "all_gather", k * n_ranks, n_ranks, i, INT32)
    else:                                                             # powersgd
        rest, p_elems, q_elems = 0, 0, 0
        for _, shape in unit:
            size = spec.numel(shape)
            a, b = (shape[0], size // shape[0]) if len(shape) >= 2 else (1, size)
            r = min(p.powersgd_rank, a, b)
            if len(shape) >= 2 and r * (a + b) < a * b:
                p_elems, q_elems = p_elems + a * r, q_elems + b * r
            else:
                rest += size
        for elems in (rest, p_elems, q_elems):
            if elems:
                _add_ring(out, "all_reduce", elems, n_ranks, i, FP32)


def _model_parallel(cfg, rank: int, out: dict) -> dict:
    """tensor_parallel.py, pipeline_parallel.py and the 3-D engine made of them (course implementation)."""
    p, m = cfg.parallel, cfg.model
    pp_rank, _, _ = spec.coords(rank, cfg.replicas, p.tp, p.pp)
    t, sp = p.tp, p.sequence_parallel and p.tp > 1
    b, s, h = p.micro_batch_size, cfg.seq_len, m.dim
    act = b * s // p.cp * h                                           # this rank's tokens (context parallel)
    n_micro = cfg.grad_accum_steps
    n_virtual = p.pp * p.vpp
    layers = _stage_layers(cfg)
    chunks = [c * p.pp + pp_rank for c in range(p.vpp)]
    if t > 1:                                                         # per micro-batch, each chunk of the rank
        for k in chunks:
            first, last = k == 0, k == n_virtual - 1
            per = empty()
            regions = 2 * len(layers[k])                              # two f/g pairs per block
            if sp:
                per["all_gather"] += FP32 * act // t * (2 * regions + first + last)
                per["reduce_scatter"] += FP32 * act * (2 * regions + first + last)
                if first and m.arch == "gpt":                         # learned positions: split, gathered back
                    per["all_gather"] += FP32 * s // p.cp * h // t
            else:
                per["all_reduce"] += FP32 * act * (2 * regions + first + last)
            if last:
                per["all_reduce"] += 3 * FP32 * b * s // p.cp         # vocab-parallel cross-entropy
            for kind in KINDS:
                out[kind] += n_micro * per[kind]
    if p.pp > 1:                                                      # activations forward, gradients back
        msg = FP32 * act // (t if sp else 1)
        for _kind, _i, c in schedule_order(p.schedule, p.pp, n_micro, p.vpp, pp_rank):
            k = c * p.pp + pp_rank
            if _kind == "F":
                out["recv"] += msg if k > 0 else 0
                out["send"] += msg if k < n_virtual - 1 else 0
            elif _kind == "B":                                        # (zero bubble's W sends nothing)
                out["recv"] += msg if k < n_virtual - 1 else 0
                out["send"] += msg if k > 0 else 0
        out["all_reduce"] += FP64                                     # the last stage's loss
    stage = [(n, shape) for k in chunks for n, shape in spec.stage_parameters(
        m, s, layers[k], k == 0, k == n_virtual - 1, t)]
    if sp:                                                            # replicated weights that saw s/t tokens
        out["all_reduce"] += FP32 * sum(spec.numel(shape) for n, shape in stage if _sequence_parallel(n))
    if cfg.replicas > 1 or p.zero_stage > 0:                          # the course's data parallelism on the shard
        _data_parallel(cfg, rank, out, stage, deferred=sp)
    out["all_reduce"] += FP64 * ((t > 1) + (p.pp > 1))                # the gradient norm over tp, over pp
    return out


def _context_parallel(cfg, rank: int, out: dict) -> None:
    """context_parallel.py's collectives, per micro-batch and block of this rank's stage: the K and V of its
    s/cp tokens all-gathered before attention (again when any recomputation reruns the block or its
    attention: the gather is inside the recomputed region), the whole sequence's dK and dV reduce-scattered
    after its backward."""
    p, m = cfg.parallel, cfg.model
    pp_rank = spec.coords(rank, cfg.replicas, p.tp, p.pp)[0]
    blocks = sum(len(_stage_layers(cfg)[c * p.pp + pp_rank]) for c in range(p.vpp))
    kv = 2 * m.n_kv_heads * (m.dim // m.n_heads) // p.tp              # K and V features on this tp rank
    tokens = p.micro_batch_size * cfg.seq_len
    gathers = 1 if p.activation_checkpointing == "none" else 2
    out["all_gather"] += cfg.grad_accum_steps * blocks * gathers * FP32 * tokens // p.cp * kv
    out["reduce_scatter"] += cfg.grad_accum_steps * blocks * FP32 * tokens * kv


def _expert_parallel(cfg, rank: int, out: dict) -> None:
    """expert_parallel.py's exchanges, per micro-batch and MoE block of this rank's stage, forward: the E
    per-expert row counts (int64) and the T k routed rows (fp32) of its T = b s/cp tokens, then the combine of
    the rows its experts received (T k on average: balanced routing); backward the two reversed, T k rows each
    on average; full recomputation reruns the forward's three. After backward, this rank's experts' gradients
    in one flat ring all-reduce over the expert data-parallel group (replicas / ep), and the experts' squared
    gradient norm summed over the ep group (one float64)."""
    p, m = cfg.parallel, cfg.model
    pp_rank, replica, _ = spec.coords(rank, cfg.replicas, p.tp, p.pp)
    blocks = sum(len(_stage_layers(cfg)[c * p.pp + pp_rank]) for c in range(p.vpp))
    rows = p.micro_batch_size * cfg.seq_len // p.cp * m.experts_per_token
    forward = INT64 * m.n_experts + 2 * FP32 * rows * m.dim // p.tp
    passes = 1 if p.activation_checkpointing == "none" else 2
    out["all_to_all"] += cfg.grad_accum_steps * blocks * (passes * forward + 2 * FP32 * rows * m.dim // p.tp)
    per_expert = sum(spec.numel(s) for n, s in spec.block_parameters(m) if ".experts.0." in n)
    n_edp = cfg.replicas // p.ep
    _add_ring(out, "all_reduce", blocks * m.n_experts // p.ep * per_expert, n_edp, replica // p.ep, FP32)
    out["all_reduce"] += FP64


def _stage_layers(cfg) -> list:
    """Layer ids of each virtual stage: the split both engines use (pipeline_parallel.partition_layers)."""
    p = cfg.parallel
    return [list(r) for r in partition_layers(cfg.model.n_layers, p.pp, p.vpp, p.first_stage_layers,
                                              p.last_stage_layers)]


def _sequence_parallel(name: str) -> bool:
    """Parameters tensor_parallel.py marks `sequence_parallel`: norms, and row-parallel biases."""
    return "norm" in name.split(".")[-2] or name.endswith(("attention.wo.bias", "feed_forward.w2.bias"))
