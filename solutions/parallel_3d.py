"""Reference solutions for the 3-D parallelism exercises (lab 06). Same functions as
labs/exercises/parallel_3d.py.

Ranks form a (pp, dp, tp) grid with tp fastest: rank = tp_rank + tp (dp_rank + dp pp_rank). A tensor-parallel
group is tp neighbouring ranks (one node), a data-parallel group strides by tp, a pipeline group by dp tp.
Model states of mixed-precision Adam: 2 (bf16 weights) + 2 (bf16 gradients) + 12 (fp32 master, m, v) bytes
per parameter, divided by tp pp, and by dp for what ZeRO shards (stage 1: optimizer, 2: + gradients,
3: + weights).
"""

from __future__ import annotations

WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES = 2, 2, 12


def mesh_coordinates(rank: int, dp: int, tp: int, pp: int) -> tuple:
    """Exercise 6.1: (pp_rank, dp_rank, tp_rank) of a global rank, tp fastest."""
    if not 0 <= rank < dp * tp * pp:
        raise ValueError(f"rank {rank} outside a grid of {dp * tp * pp}")
    return rank // (dp * tp), (rank // tp) % dp, rank % tp


def process_groups(dp: int, tp: int, pp: int) -> dict:
    """Exercise 6.2: {"tp": [...], "dp": [...], "pp": [...]}: every group of each kind, as sorted rank lists."""
    rank = lambda q, d, t: t + tp * (d + dp * q)
    return {"tp": [[rank(q, d, t) for t in range(tp)] for q in range(pp) for d in range(dp)],
            "dp": [[rank(q, d, t) for d in range(dp)] for q in range(pp) for t in range(tp)],
            "pp": [[rank(q, d, t) for q in range(pp)] for d in range(dp) for t in range(tp)]}


def model_state_bytes(n_params: float, dp: int, tp: int, pp: int, zero_stage: int = 0) -> float:
    """Exercise 6.3: bytes of weights + gradients + optimizer state on one GPU (mixed-precision Adam)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    psi = n_params / (tp * pp)
    weights = WEIGHT_BYTES * psi / (dp if zero_stage >= 3 else 1)
    grads = GRAD_BYTES * psi / (dp if zero_stage >= 2 else 1)
    optimizer = OPTIMIZER_BYTES * psi / (dp if zero_stage >= 1 else 1)
    return weights + grads + optimizer


def fits_in_memory(n_params: float, dp: int, tp: int, pp: int, zero_stage: int, activation_bytes: float,
                   capacity_bytes: float) -> bool:
    """Exercise 6.3: do model states + activations fit in one GPU's memory?"""
    return model_state_bytes(n_params, dp, tp, pp, zero_stage) + activation_bytes <= capacity_bytes


def valid_layouts(num_gpus: int, n_heads: int, n_kv_heads: int, n_layers: int, gpus_per_node: int) -> list:
    """Exercise 6.4: every (dp, tp, pp) with dp tp pp = num_gpus, tp dividing gpus_per_node, n_heads and
    n_kv_heads, and 1 <= pp <= n_layers; sorted."""
    out = []
    for tp in range(1, gpus_per_node + 1):
        if gpus_per_node % tp or n_heads % tp or n_kv_heads % tp or num_gpus % tp:
            continue
        for pp in range(1, min(n_layers, num_gpus // tp) + 1):
            if (num_gpus // tp) % pp == 0:
                out.append((num_gpus // (tp * pp), tp, pp))
    return sorted(out)


def new_process_groups(rank: int, dp: int, tp: int, pp: int) -> dict:
    """Exercise 6.5: create every tp, dp and pp group with torch.distributed.new_group (all ranks create all
    groups, in the same order) and return {"tp": g, "dp": g, "pp": g}, the groups holding `rank`."""
    import torch.distributed as dist

    mine = {}
    for kind, groups in process_groups(dp, tp, pp).items():
        for ranks in groups:
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[kind] = group
    return mine
