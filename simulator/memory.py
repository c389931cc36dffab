"""Memory: bytes on one GPU of a 3-D layout: weights, gradients, optimizer state and activations.

For pipeline rank r holding virtual stages k = c p + r with L_k blocks each:

    Psi_r        = sum_k L_k x params_per_block / t  (+ embedding V h / t on the first stage,
                   + output head V h / t on the last)
    states       = Psi_r x (2 + 2 + 12) bytes for mixed-precision Adam, sharded over dp by ZeRO
                   (workload.state_bytes)
    activations  = (most blocks' worth of micro-batches in flight under the schedule)
                   x activation_bytes_per_layer (Korthikanti et al. 2022)
                   + one block's full activations during its backward under full recomputation
                   + the fp32 logits and their gradient on the last stage

The in-flight count comes from walking the rank's actual schedule (`pipeline_parallel.peak_in_flight`):
p micro-batches on the first stage of 1F1B, m with GPipe, p (1 + (p-1)/(p v)) interleaved.

    python -c "from simulator.memory import demo; demo()"
"""

from __future__ import annotations

from simulator.pipeline_parallel import partition_layers, peak_in_flight, schedule_order
from simulator.workload import DTYPE_BYTES, activation_bytes_per_layer, layer_params, state_bytes

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
    per_block = layer_params(m) / t
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


def rank_memory(cfg, rank: int, layers: list, n_micro: int) -> dict:
    """Bytes of pipeline rank `rank` (one GPU of it): params, grads, optimizer, activations, total."""
    p = cfg.parallel
    t, pp, v = p.tp, p.pp, p.vpp
    prec = cfg.training.precision
    psi_virtual = virtual_stage_params(cfg, layers)
    chunks = [c * pp + rank for c in range(v)]
    psi = sum(psi_virtual[k] for k in chunks)
    states = state_bytes(psi, prec, cfg.training.optimizer, p.zero_stage, p.dp)
    flash = uses_flash(cfg)
    act_args = dict(seq_len=cfg.seq_len, micro_batch=p.micro_batch_size, tp=t,
                    sequence_parallel=p.sequence_parallel, flash=flash, precision=prec)
    per_layer = activation_bytes_per_layer(cfg.model, recompute=p.activation_checkpointing, **act_args)
    order = schedule_order(p.schedule, pp, n_micro, v, rank)
    held_layers = peak_in_flight(order, [layers[k] for k in chunks])
    acts = held_layers * per_layer
    if p.activation_checkpointing == "full":
        acts += activation_bytes_per_layer(cfg.model, recompute="none", **act_args)
    if rank == pp - 1:
        tokens = p.micro_batch_size * cfg.seq_len
        acts += tokens * cfg.model.vocab_size / t * (DTYPE_BYTES[prec] + 4 + 4)
    out = dict(states)
    out["activations"] = acts
    out["total"] = sum(out.values())
    return out


def layout_memory(cfg, layers: list, n_micro: int) -> tuple:
    """(bytes of the fullest rank, that rank): the stage that decides whether a layout fits."""
    best, best_rank = None, 0
    ranks = range(cfg.parallel.pp) if cfg.parallel.pp <= 64 else sorted({0, 1, cfg.parallel.pp - 1})
    for r in ranks:
        mem = rank_memory(cfg, r, layers, n_micro)
        if best is None or mem["total"] > best["total"]:
            best, best_rank = mem, r
    return best, best_rank


def demo() -> None:
    from simulator.config import load_config

    cfg = load_config({"model": {"preset": "llama-7b"}, "seq_len": 4096, "cluster": {"gpu": "a100-80gb"},
                       "parallel": {"dp": 8, "global_batch_size": 64}})
    mem, _ = layout_memory(cfg, layers_per_virtual_stage(cfg.model.n_layers, 1), cfg.grad_accum_steps)
    print({k: f"{v / GB:.1f} GB" for k, v in mem.items()})
