"""Memory: bytes on one GPU of a 3-D layout: weights, gradients, optimizer state and activations.

For pipeline rank r holding virtual stages k = c p + r with L_k blocks each:

    Psi_r        = sum_k L_k x params_per_block / t  (+ embedding V h / t on the first stage,
                   + output head V h / t on the last)
    states       = Psi_r x (2 + g + 12) bytes for mixed-precision Adam, g = 4 with fp32 gradient
                   reduction (the default), 2 with bf16; sharded over dp by ZeRO (workload.state_bytes);
                   ZeRO-2/3 add whole gradients beside their shard: all of them while accumulating
                   micro-batches before one reduction (course, FSDP2), one block's before its reduce-
                   scatter otherwise; ZeRO-3 adds the weights of the blocks gathered at once (one just in
                   time, two with prefetching); FSDP's ZeRO-3 keeps no 16-bit shard beside its fp32 master
    activations  = (most blocks' worth of micro-batches in flight under the schedule)
                   x activation_bytes_per_layer (Korthikanti et al. 2022)
                   + one block's full activations during its backward under full recomputation
                   + the fp32 logits and their gradient on the last stage
                   (context parallelism: all of it for s/cp tokens, plus the K and V gathered from the
                   other cp ranks, kept for the attention's backward)
                   (mixture of experts: E/ep experts' weights and states per GPU, ZeRO sharding those over
                   the dp x cp / ep replicas holding them; the MoE MLP's activations, expert_parallel.py)

The in-flight count comes from walking the rank's actual schedule (`pipeline_parallel.peak_in_flight`):
p micro-batches on the first stage of 1F1B, m with GPipe, p (1 + (p-1)/(p v)) interleaved.

    python -c "from simulator.memory import demo; demo()"
"""

from __future__ import annotations

from functools import lru_cache

from simulator.config import load_config
from simulator.context_parallel import kv_bytes
from simulator.data_parallel import gathered_blocks, grad_bytes_per_param, zero_semantics
from simulator.expert_parallel import local_expert_params, local_layer_params
from simulator.pipeline_parallel import partition_layers, peak_in_flight, schedule_order
from simulator.workload import DTYPE_BYTES, activation_bytes_per_layer, state_bytes

GB = 1e9


def uses_flash(cfg) -> bool:
    fa = cfg.training.flash_attention
    return (cfg.model.arch == "llama") if fa is None else bool(fa)


def layers_per_virtual_stage(n_layers: int, n_virtual: int) -> list:
    """Blocks of each virtual stage; when they do not divide evenly the first stages take one more."""
    base, extra = divmod(n_layers, n_virtual)
    return [base + (1 if k < extra else 0) for k in range(n_virtual)]


def stage_layers(cfg) -> list:
    """Blocks of each virtual stage k = c pp + r of a config: `pipeline_parallel.partition_layers` with
    its first/last stage layer counts (the one partition both engines use)."""
    p = cfg.parallel
    return [len(r) for r in partition_layers(cfg.model.n_layers, p.pp, p.vpp, p.first_stage_layers,
                                             p.last_stage_layers)]


def virtual_stage_params(cfg, layers: list) -> list:
    """Parameters of each virtual stage on one TP rank."""
    m, t = cfg.model, cfg.parallel.tp
    per_block = local_layer_params(m, cfg.parallel.ep) / t      # a mixture of experts: E/ep of its experts
    embed = m.vocab_size * m.dim / t + (cfg.seq_len * m.dim if m.arch == "gpt" else 0)
    head = m.vocab_size * m.dim / t
    n = len(layers)
    out = []
    for k, n_blocks in enumerate(layers):
        psi = n_blocks * per_block
        if k == 0:
            psi += embed
        if k == n - 1 and (not m.tie_embeddings or n > 1):
            psi += head + m.dim
        out.append(psi)
    return out


def rank_memory(cfg, rank: int, layers: list, n_micro: int, system: str | None = None) -> dict:
    """Bytes of pipeline rank `rank` (one GPU of it): params, grads, optimizer, activations, total;
    `system` the data-parallel rules (data_parallel.zero_semantics)."""
    p = cfg.parallel
    t, pp, v = p.tp, p.pp, p.vpp
    prec = cfg.training.precision
    psi_virtual = virtual_stage_params(cfg, layers)
    chunks = [c * pp + rank for c in range(v)]
    psi = sum(psi_virtual[k] for k in chunks)
    replicas = cfg.replicas                 # dp x cp ranks share the states ZeRO shards
    # expert parallelism: the experts among them are sharded over the replicas / ep holding the same ones
    psi_e = local_expert_params(cfg.model, sum(layers[k] for k in chunks), p.ep, t)
    states = state_bytes(psi, prec, cfg.training.optimizer, p.zero_stage, replicas, cfg.training.grad_reduce_dtype,
                         psi_e, p.ep)
    sem = zero_semantics(cfg, system)
    if sem.shards_grads(p.zero_stage) and replicas > 1:
        block = local_layer_params(cfg.model, p.ep) / t
        states["grads"] = (psi + psi_e * (p.ep - 1)) * grad_bytes_per_param(cfg) / replicas  # experts over replicas/ep
        # gradients beside the shard: every one of them, whole, while accumulating without a reduction
        # (course, FSDP2's no-sync); else the block whose backward just ended, before its reduce-scatter
        whole = psi if sem.holds_whole_grads(p.zero_stage, n_micro) else block
        states["grads"] += whole * grad_bytes_per_param(cfg)
        if p.zero_stage == 3:   # the whole weights of the blocks gathered at once
            if sem.system in ("fsdp2", "fsdp_sharded") and prec != "fp32":
                # FSDP's shard is the fp32 master (counted in `optimizer`), cast to bf16 as it is gathered:
                # no 16-bit copy of the shard besides it
                states["params"] = 0.0
            states["params"] += gathered_blocks(cfg, system) * block * DTYPE_BYTES[prec]
    flash = uses_flash(cfg)
    s_local = cfg.seq_len // p.cp           # context parallelism: this GPU's tokens
    act_args = dict(seq_len=s_local, micro_batch=p.micro_batch_size, tp=t,
                    sequence_parallel=p.sequence_parallel, flash=flash, precision=prec)
    # the K and V the other cp ranks sent: kept for the attention's backward, or, when recomputation reruns
    # the attention (every mode: the gather is inside what it reruns), gathered again for one block at a time
    gathered = kv_bytes(cfg.model, cfg.seq_len, p.micro_batch_size, t, prec) * (1 - 1 / p.cp)
    per_layer = activation_bytes_per_layer(cfg.model, recompute=p.activation_checkpointing, **act_args)
    if p.activation_checkpointing == "none":
        per_layer += gathered
    acts = held_layers(p.schedule, pp, n_micro, v, rank, tuple(layers[k] for k in chunks)) * per_layer
    if p.activation_checkpointing != "none":
        acts += gathered
    if p.activation_checkpointing == "full":
        acts += activation_bytes_per_layer(cfg.model, recompute="none", **act_args)
    if rank == pp - 1:
        tokens = p.micro_batch_size * s_local
        acts += tokens * cfg.model.vocab_size / t * (DTYPE_BYTES[prec] + 4 + 4)
    out = dict(states)
    out["activations"] = acts
    out["total"] = sum(out.values())
    return out


@lru_cache(maxsize=4096)
def held_layers(schedule: str, pp: int, n_micro: int, v: int, rank: int, chunk_layers: tuple) -> float:
    """Most layers' worth of micro-batch activations pipeline rank `rank` holds at once: m x L under GPipe,
    min(p - r, m) x L under 1F1B (its warm-up forwards and one more), the walk of its order interleaved."""
    if schedule == "gpipe":
        return n_micro * chunk_layers[0]
    if schedule == "1f1b" or v == 1:
        return min(pp - rank, n_micro) * chunk_layers[0]
    return peak_in_flight(schedule_order(schedule, pp, n_micro, v, rank), list(chunk_layers))


def layout_memory(cfg, layers: list, n_micro: int, system: str | None = None) -> tuple:
    """(bytes of the fullest rank, that rank): the stage that decides whether a layout fits.

    Only ranks 0, 1 and p - 1 can be the fullest: from rank 1 to p - 2 the layers per rank (the first
    virtual stages take the extra ones) and the micro-batches in flight (fewer warm-up forwards further
    down the pipeline) never grow, rank 0 adds the embedding and rank p - 1 the head and its logits."""
    best, best_rank = None, 0
    for r in sorted({0, 1, cfg.parallel.pp - 1} & set(range(cfg.parallel.pp))):
        mem = rank_memory(cfg, r, layers, n_micro, system)
        if best is None or mem["total"] > best["total"]:
            best, best_rank = mem, r
    return best, best_rank


def demo() -> None:
    cfg = load_config({"model": {"preset": "llama-7b"}, "seq_len": 4096, "cluster": {"gpu": "a100-80gb"},
                       "parallel": {"dp": 8, "global_batch_size": 64}})
    mem, _ = layout_memory(cfg, layers_per_virtual_stage(cfg.model.n_layers, 1), cfg.grad_accum_steps)
    print({k: f"{v / GB:.1f} GB" for k, v in mem.items()})
