"""Mixture of experts and expert parallelism: E MLPs per block, each token sent to k of them, split over GPUs.

A mixture-of-experts block replaces its MLP by E experts (each an MLP of ffn_dim) and a router, a dim x E
matmul whose top-k logits choose the k experts of each token (Mixtral: E 8, k 2); the token's output is
their outputs weighted by the softmax of the chosen logits. The model holds E MLPs of weights but a token
runs only k: Mixtral 8x7B has 46.7B parameters, 12.9B of them active. FLOPs, and so MFU, count the active
ones (`workload.active_matmul_params`, as Mixtral and DeepSeek report them); memory holds all of them.

Expert parallelism splits each block's experts over ep of the data-parallel replicas (dp x cp): each GPU
holds E/ep experts. After the router, every GPU sends each token copy to the rank holding its expert
(dispatch, an all-to-all), the experts run on what they received, and a second all-to-all brings the
outputs back (combine). Per block and micro-batch, on one GPU (A = b s/cp k h e / t bytes, its routed copies
on one tensor-parallel rank; an all-to-all of A sends A/ep to each of the ep ranks, (ep - 1)/ep of it away):

    forward    dispatch all-to-all(A), combine all-to-all(A)     backward   the same two, reversed
    compute    attention as dense; the router; E/ep experts of b s k ep / E rows each (balanced routing)
    memory     expert weights, gradients and optimizer states / ep; ZeRO shards them over dp / ep

Routing is assumed balanced (every expert receives k/E of the tokens; dropless, so nothing is dropped),
which is what the load-balancing loss aims at; real imbalance makes the busiest rank slower. The experts
wait for the dispatch and the next op for the combine: both are exposed, like tensor parallelism's, and
recomputation repeats the forward pair (full, and the selective modes too: they keep matmul outputs only,
so the course's checkpointed block runs its exchanges again, as comm_bytes counts and the runtime's wire
recorder confirms). The ep group is ep consecutive replicas (`Layout.ep_group`, spec.ep_groups), so with
tp x ep <= 8 it stays inside a node, on NVLink.

Gradients: non-expert ones are averaged over all dp x cp replicas as before; an expert's over the dp / ep
replicas holding it (the expert-data-parallel group, `edp_group`). The simulator keeps one bucket stream
per rank: the expert gradients travel in the same buckets, their bytes scaled by what a ring over dp / ep
ranks moves per rank against one over dp ranks (`expert_wire_share`), so they cost their own collective's
bandwidth term (nothing when ep = dp); the edp group's own links and latency are not modelled.

Also assumed: with tensor parallelism every expert's ffn is split over the tp ranks as a dense MLP's is, the
router runs whole on each, and each tp rank exchanges 1/t of the routed copies; ZeRO-3's gathers of the E/ep
local experts are priced on the data-parallel group (the edp group moves as many bytes per rank, over fewer
ranks); the all-to-alls of ep groups that leave the node do not contend with the gradient traffic.

    llama-course simulate configs/tiny.yaml --set model.n_experts=4 --set parallel.ep=2 --set cluster.num_gpus=4
    .venv/bin/python benchmarks/expert_parallel.py          (Mixtral 8x7B on 64 H100s, ep 1 to 8)
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.pipeline_parallel import partition_layers
from simulator.schema import ConfigError
from simulator.workload import DTYPE_BYTES, active_params, count_params, expert_params, layer_params


def check_experts(cfg) -> None:
    """The rules model.n_experts and parallel.ep add to validation (ConfigError, one line)."""
    m, p = cfg.model, cfg.parallel
    if m.n_experts < 0:
        raise ConfigError(f"model.n_experts: {m.n_experts} must be 0 (dense) or more")
    if m.n_experts and not 1 <= m.experts_per_token <= m.n_experts:
        raise ConfigError(f"model.experts_per_token: {m.experts_per_token} must be between 1 and "
                          f"model.n_experts {m.n_experts}")
    if m.router_aux_loss < 0:
        raise ConfigError(f"model.router_aux_loss: {m.router_aux_loss} must be >= 0")
    if p.ep == 1:
        return
    if not m.n_experts:
        raise ConfigError(f"parallel.ep: {p.ep} needs a mixture of experts (model.n_experts > 0)")
    if m.n_experts % p.ep:
        raise ConfigError(f"parallel.ep: {p.ep} does not divide model.n_experts {m.n_experts}")
    if cfg.replicas % p.ep:
        raise ConfigError(f"parallel.ep: {p.ep} does not divide the {cfg.replicas} data-parallel replicas "
                          f"(dp x cp); expert parallelism splits the experts over replicas")


def expert_degrees(model, replicas: int) -> tuple:
    """The ep the planner tries: powers of two dividing both the experts and the dp x cp replicas (1 when
    dense)."""
    e = getattr(model, "n_experts", 0)
    return tuple(x for x in (1, 2, 4, 8, 16, 32, 64, 128, 256) if x == 1 or (e and e % x == 0 and replicas % x == 0))


# ---------------------------------------------------------------------------------------------
# Parameters on one GPU
# ---------------------------------------------------------------------------------------------

def local_layer_params(model, ep: int = 1) -> float:
    """Parameters of one block on one GPU of an ep group (before tensor parallelism): the non-expert ones
    and E/ep of the experts; layer_params itself when dense."""
    if not getattr(model, "n_experts", 0):
        return layer_params(model)
    return layer_params(model) - expert_params(model) * (ep - 1) / ep


def local_expert_params(model, n_blocks: float, ep: int = 1, tp: int = 1) -> float:
    """Expert parameters of n_blocks blocks on one GPU: E/ep experts each, split over tp like a dense MLP."""
    return n_blocks * expert_params(model) / ep / tp


def zero_shard_params(psi: float, psi_expert: float, replicas: int, ep: int = 1) -> float:
    """Parameters of a ZeRO shard on one GPU holding psi of them, psi_expert of those experts: the non-expert
    ones over all replicas, the experts over the replicas / ep that hold the same ones."""
    return (psi + psi_expert * (ep - 1)) / replicas


def expert_wire_share(cfg) -> float:
    """What a byte of expert gradient costs on the wire against a non-expert one: reduced over dp / ep
    replicas instead of dp, a ring moves (n_e - 1)/n_e of it per rank instead of (n - 1)/n (0 when
    ep = replicas: each GPU holds the only copy of its experts)."""
    n, ep = cfg.replicas, cfg.parallel.ep
    if n <= 1:
        return 1.0
    n_e = n // ep
    return ((n_e - 1) / n_e) / ((n - 1) / n)        # collectives.bus_factor's ratio, all-reduce or reduce-scatter


def reduced_params(cfg, layers: list, psi_virtual: list) -> list:
    """Per virtual stage, the parameters whose gradients go on the data-parallel wire, in non-expert
    equivalents: psi with its expert part scaled by `expert_wire_share` (psi itself when dense or ep 1)."""
    p = cfg.parallel
    if not cfg.model.n_experts or p.ep == 1:
        return psi_virtual
    w = expert_wire_share(cfg)
    return [psi - (1 - w) * local_expert_params(cfg.model, n, p.ep, p.tp) for psi, n in zip(psi_virtual, layers)]


# ---------------------------------------------------------------------------------------------
# Communication: the dispatch and combine all-to-alls of every block
# ---------------------------------------------------------------------------------------------

def dispatch_bytes(model, seq_len: int, micro_batch: int, tp: int = 1, cp: int = 1, precision: str = "bf16") -> float:
    """A: the routed token copies one GPU sends in a dispatch (and receives back in the combine), b s/cp k h
    elements on one tensor-parallel rank (its 1/t of them), in the compute precision; the all-to-all's
    nbytes (collectives.py: each rank's whole buffer, 1/n of it to each rank)."""
    tokens = micro_batch * seq_len // cp
    return 1.0 * tokens * model.experts_per_token * model.dim * DTYPE_BYTES[precision] / tp


def ep_block_collectives(cfg) -> list:
    """[(kind, bytes)] of one block's forward on one expert-parallel rank (dispatch, combine); its backward
    runs the same two in reverse (the combine's gradient dispatched, the dispatch's combined)."""
    p = cfg.parallel
    a = dispatch_bytes(cfg.model, cfg.seq_len, p.micro_batch_size, p.tp, p.cp, cfg.training.precision)
    return [("all_to_all", a), ("all_to_all", a)]


@dataclass
class EPComm:
    """Seconds of expert-parallel communication per micro-batch and block on one GPU."""

    block_forward: float
    block_backward: float

    def add(self, forward: float, backward: float) -> tuple:
        """(forward, backward) seconds with these added (unchanged, bit for bit, without them)."""
        if not self.block_forward:
            return forward, backward
        return forward + self.block_forward, backward + self.block_backward


def edp_group(layout, tp_index: int = 0, ep_index: int = 0, pp_index: int = 0) -> list:
    """The dp x cp / ep replicas of a `parallel_3d.Layout` that hold the same experts (they average the
    experts' gradients): every ep-th replica."""
    return [layout.rank(tp_index, ep_index + layout.ep * i, pp_index) for i in range(layout.dp // layout.ep)]


def ep_comm(cfg, comm, group) -> EPComm:
    """Time one block's dispatch and combine all-to-alls (forward; the backward's are the same) on `group`."""
    if len(group) <= 1 or not cfg.model.n_experts:
        return EPComm(0.0, 0.0)
    t = sum(comm.time(kind, group, n) for kind, n in ep_block_collectives(cfg))
    return EPComm(t, t)


def step_all_to_all(cfg, comm, layout, rank: int = 0) -> float:
    """Seconds pipeline rank `rank` spends in dispatch and combine all-to-alls in one step: every
    micro-batch's forward and backward pair per block of its chunks, and the forward pair again under any
    recomputation (the selective modes keep matmul outputs only, so the course's checkpoint reruns them)."""
    p = cfg.parallel
    c = ep_comm(cfg, comm, layout.ep_group())
    stages = partition_layers(cfg.model.n_layers, p.pp, p.vpp, p.first_stage_layers, p.last_stage_layers)
    blocks = sum(len(stages[k * p.pp + rank]) for k in range(p.vpp))
    again = c.block_forward if p.activation_checkpointing != "none" else 0.0
    return cfg.grad_accum_steps * blocks * (c.block_forward + c.block_backward + again)


def experts_report(cfg, comm, layout, step, step_time: float) -> dict:
    """simulate's `experts` field: total and active parameters, the critical rank's all-to-all seconds and
    their share of the step."""
    a2a = step_all_to_all(cfg, comm, layout, step.critical_rank)
    return {"params": count_params(cfg.model, cfg.seq_len), "active_params": active_params(cfg.model, cfg.seq_len),
            "all_to_all_s": a2a, "all_to_all_share": a2a / step_time}
