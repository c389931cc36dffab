"""Exercises for lab 06, 3-D parallelism: the rank grid, memory per GPU, the layouts a model allows, and
real process groups on gloo.

Ranks are laid out as a (pp, dp, tp) grid with tp fastest, as Megatron-LM does:

    rank = tp_rank + tp x (dp_rank + dp x pp_rank)

so the tp ranks of a tensor-parallel group are neighbours (one node, NVLink), a data-parallel group strides
by tp and a pipeline group by dp x tp.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only parallel_3d            # or: pytest tests/exercises/test_parallel_3d.py

Theory: docs/concepts/parallel_3d.md; the runtime is llama_course/core/distributed.py and parallel_3d.py; the
planner that searches layouts is simulator/plan.py (`llama-course plan`).
"""

from __future__ import annotations


def mesh_coordinates(rank: int, dp: int, tp: int, pp: int) -> tuple:
    """Exercise 6.1: the coordinates (pp_rank, dp_rank, tp_rank) of global rank `rank` in the grid above.
    Raise ValueError for a rank outside 0 .. dp tp pp - 1.
    """
    raise NotImplementedError("Exercise 6.1: mesh_coordinates")


def process_groups(dp: int, tp: int, pp: int) -> dict:
    """Exercise 6.2: every communication group of the grid: {"tp": [...], "dp": [...], "pp": [...]}, each a
    list of groups and each group a sorted list of global ranks. A tp group holds the ranks that differ
    only in tp_rank (the ranks that split one layer), a dp group those that differ only in dp_rank (the
    replicas that average gradients), a pp group those that differ only in pp_rank (one pipeline).
    How many groups of each kind are there, and how big is each?
    """
    raise NotImplementedError("Exercise 6.2: process_groups")


def model_state_bytes(n_params: float, dp: int, tp: int, pp: int, zero_stage: int = 0) -> float:
    """Exercise 6.3: bytes of model states on one GPU when training with mixed-precision Adam:
    2 bytes of bf16 weights, 2 of bf16 gradients and 12 of fp32 optimizer state (master weights, first and
    second moments) per parameter. Tensor and pipeline parallelism give each GPU 1/(tp pp) of the
    parameters; ZeRO then shards over the dp replicas: stage 1 the optimizer state, stage 2 also the
    gradients, stage 3 also the weights. Raise ValueError for another zero_stage.
    """
    raise NotImplementedError("Exercise 6.3: model_state_bytes")


def fits_in_memory(n_params: float, dp: int, tp: int, pp: int, zero_stage: int, activation_bytes: float,
                   capacity_bytes: float) -> bool:
    """Exercise 6.3: True when the model states (model_state_bytes) plus `activation_bytes` fit in
    `capacity_bytes` (equality fits)."""
    raise NotImplementedError("Exercise 6.3: fits_in_memory")


def valid_layouts(num_gpus: int, n_heads: int, n_kv_heads: int, n_layers: int, gpus_per_node: int) -> list:
    """Exercise 6.4: every layout (dp, tp, pp) a model and a cluster allow, sorted:
    dp x tp x pp == num_gpus; tp divides gpus_per_node (a tensor-parallel group never straddles two nodes),
    n_heads and n_kv_heads (each rank gets whole heads, and the kv heads its query heads read);
    1 <= pp <= n_layers (every stage holds a layer). dp, tp, pp >= 1.
    """
    raise NotImplementedError("Exercise 6.4: valid_layouts")


def new_process_groups(rank: int, dp: int, tp: int, pp: int) -> dict:
    """Exercise 6.5: build the grid's real process groups on an initialised torch.distributed world of
    dp x tp x pp processes, and return {"tp": group, "dp": group, "pp": group}: the three groups that
    contain `rank`.

    torch.distributed.new_group(ranks) is collective: EVERY process must call it for EVERY group, in the
    same order, even for groups it is not in (it gets a placeholder back). The test all-reduces over the
    groups you return and checks who answered.
    """
    raise NotImplementedError("Exercise 6.5: new_process_groups")
