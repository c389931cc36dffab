"""Parameter server (cost model): server bandwidth, fan-in (incast), and when it loses to all-reduce.

N workers each hold a replica; k servers hold the parameters, tensor by tensor, server j a share f_j of
the Psi parameters (`assign_shards`: greedy largest-first, so the fullest share is close to 1/k but never
below the largest tensor). A synchronous (BSP) step, with g bytes per gradient and e bytes per weight:

    push    every worker sends f_j Psi g to server j          server j's link receives  N f_j Psi g
    update  server j steps the optimizer on f_j Psi           (memory bound, as on a GPU)
    pull    server j sends f_j Psi e to every worker          server j's link sends     N f_j Psi e

    T_ps  = 2 alpha + max_j N f_j Psi (g + e) / B  + T_opt(f_max Psi)        (the server link binds when N f_j > 1)
    T_ring = 2 (N - 1) alpha + 2 (N - 1)/N Psi g / B                        (every link carries the same bytes)

so T_ps / T_ring ~ N f_max (g + e) / (2 g) ~ N / k for large N: one server loses by a factor that grows
with the workers; k = N servers (one per worker, "co-located", as BytePS does) match the ring. Incast is
the fan-in: N flows converge on one server port. The flow model (`simulate_push`, max-min fair sharing on
the cluster graph) gives each of them B / N; real TCP fan-in is worse still (switch buffers overflow and
retransmission timeouts stall whole flows), which this model leaves out: it is a lower bound on T_ps.

What a PS still buys (and why recommendation and sparse models kept it): only the rows a worker touched
need moving (sparse embeddings), workers may come and go, and updates need not be synchronous
(sync_async.py).

Seed questions: 2 (what a parameter server is), 26 (aggregating parameters), 29 (PS vs all-reduce).

    llama-course simulate configs/tiny.yaml --set parallel.strategy=parameter_server --set parallel.num_servers=2
    python -c "from simulator.parameter_server import crossover_table; print(crossover_table())"
"""

from __future__ import annotations

import heapq

from simulator.compute import optimizer_time
from simulator.config import load_config
from simulator.data_parallel import compression_factor, grad_bytes_per_param
from simulator.hardware import gpu_preset
from simulator.memory import virtual_stage_params
from simulator.network import transfer_time
from simulator.topology import Cluster
from simulator.workload import DTYPE_BYTES, count_params


def assign_shards(sizes, num_servers: int) -> list:
    """Server of each tensor: largest tensor first, each to the server holding the fewest elements so far
    (ties to the lower server). The fullest server holds at most max(sizes) + sum(sizes) / k (Graham's
    bound for greedy list scheduling; largest-first brings it within 4/3 of the optimum)."""
    if num_servers < 1:
        raise ValueError(f"num_servers must be positive, got {num_servers}")
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError("tensor sizes must not be negative")
    owner = [0] * len(sizes)
    heap = [(0, j) for j in range(num_servers)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, j = heapq.heappop(heap)
        owner[i] = j
        heapq.heappush(heap, (load + sizes[i], j))
    return owner


def shard_loads(sizes, owner, num_servers: int) -> list:
    """Elements each server holds."""
    loads = [0] * num_servers
    for s, j in zip(sizes, owner):
        loads[j] += int(s)
    return loads


def tensor_sizes(model) -> list:
    """Element counts of the model's tensors, as the runtime's LLaMA names them (torch-free)."""
    d, hd = model.dim, model.dim // model.n_heads
    kv = (model.n_kv_heads or model.n_heads) * hd
    block = [d * d, d * kv, d * kv, d * d, d * model.ffn_dim, model.ffn_dim * d, d * model.ffn_dim, d, d]
    if model.arch == "gpt":
        block = [d * d] * 4 + [d * 4 * d, 4 * d * d, d, d, d, d]
    sizes = [model.vocab_size * d] + block * model.n_layers + [d]
    if not model.tie_embeddings:
        sizes.append(model.vocab_size * d)
    return sizes


def server_assignment(cfg) -> tuple:
    """(tensor sizes, server of each tensor) of the size-balanced assignment."""
    sizes = tensor_sizes(cfg.model)
    return sizes, assign_shards(sizes, cfg.parallel.num_servers)


def server_shares(cfg, assignment: tuple | None = None) -> list:
    """f_j: the share of the parameters on each server, from the size-balanced assignment."""
    sizes, owner = assignment or server_assignment(cfg)
    total = sum(sizes)
    return [x / total for x in shard_loads(sizes, owner, cfg.parallel.num_servers)]


def ps_step_comm(n_workers: int, psi: float, shares, grad_bytes: float, weight_bytes: float,
                 bandwidth: float, latency: float) -> dict:
    """Seconds of one BSP push + pull (closed form above): server-bound or worker-bound, whichever is slower."""
    f_max = max(shares)
    push = latency + max(n_workers * f_max * psi * grad_bytes, psi * grad_bytes) / bandwidth
    pull = latency + max(n_workers * f_max * psi * weight_bytes, psi * weight_bytes) / bandwidth
    return {"push_s": push, "pull_s": pull, "server_bound": n_workers * f_max > 1}


def ring_all_reduce_time(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    """Alpha-beta cost of a ring all-reduce (collectives.py simulates the same on the graph)."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * nbytes / bandwidth


def simulate_push(hw, n_workers: int, shares, psi: float, grad_bytes: float) -> float:
    """Push phase on the cluster graph (max-min fair flows): workers are ranks 0..N-1, servers follow.
    Agrees with `ps_step_comm` when every rank has its own NIC; use it to see fan-in at a glance."""
    k = len(shares)
    cluster = Cluster(hw, n_workers + k)
    cluster.add_ranks(range(n_workers + k))
    flows = [(w, n_workers + j, shares[j] * psi * grad_bytes) for w in range(n_workers) for j in range(k)
             if shares[j] > 0]
    return transfer_time(cluster, flows)


def link(hw, n_ranks: int) -> tuple:
    """(bandwidth, latency) of the link a rank uses: within a node when all ranks fit in one (on `cpu` every
    process, servers included, runs on this one machine)."""
    if n_ranks <= hw.gpus_per_node or hw.name == "cpu":
        return hw.intra_bandwidth * hw.link_efficiency, hw.intra_latency
    return hw.inter_bandwidth, hw.inter_latency


def contribute(ctx) -> None:
    """simulate() hook: the all-reduce is replaced by push, server update and pull (not overlapped with the
    backward: the runtime pushes after it); the workers' optimizer step moves to the servers."""
    cfg, hw = ctx.cfg, ctx.hw
    p = cfg.parallel
    psi = sum(virtual_stage_params(cfg, ctx.step.layers))
    sizes, owner = server_assignment(cfg)
    shares = server_shares(cfg, (sizes, owner))
    bw, lat = link(hw, p.dp + p.num_servers)
    g = grad_bytes_per_param(cfg) * compression_factor(cfg)
    e = DTYPE_BYTES[cfg.training.precision]
    comm = ps_step_comm(p.dp, psi, shares, g, e, bw, lat)
    fullest = max(range(p.num_servers), key=lambda j: shares[j])
    update = optimizer_time(max(shares) * psi, cfg.training.precision, cfg.training.optimizer, hw,
                            tensors=sum(1 for o in owner if o == fullest))
    trip = hw.rpc_round_trip(p.dp, max(shares) * psi * max(g, e))
    if trip is not None:
        # cpu: what `bench` measured, N workers pushing to a server over torch RPC right after compute and
        # answered once all pushed (the fixed cost of RPCs between processes that must be scheduled again
        # dwarfs the link); split over push and pull by their bytes
        comm = {**comm, "push_s": trip * g / (g + e), "pull_s": trip * e / (g + e)}
    ctx.breakdown["exposed_comm"] += comm["push_s"] + comm["pull_s"] - ctx.step.comm["dp_exposed"]
    ctx.breakdown["optimizer"] = update
    ctx.extra["parameter_server"] = {
        "push_s": comm["push_s"], "pull_s": comm["pull_s"], "server_update_s": update,
        "server_shares": shares, "server_bound": comm["server_bound"],
        "server_bytes_per_step": p.dp * max(shares) * psi * (g + e),
        "ring_all_reduce_s": ring_all_reduce_time(p.dp, psi * g, bw, lat),
    }


def crossover_table(gpu: str = "a100-80gb", preset: str = "llama-7b", workers=(2, 8, 32, 128, 512),
                    servers=(1, 8, 64)) -> str:
    """T_ps / T_ring for a model on a GPU cluster, workers x servers (markdown)."""
    hw = gpu_preset(gpu)
    lines = ["| workers | " + " | ".join(f"k={k}" for k in servers) + " |", "|---:|" + "---:|" * len(servers)]
    for n in workers:
        row = []
        for k in servers:
            cfg = load_config({"model": {"preset": preset}, "parallel": {"num_servers": k}})
            psi = count_params(cfg.model)
            ps = ps_step_comm(n, psi, server_shares(cfg), 2, 2, hw.inter_bandwidth, hw.inter_latency)
            ring = ring_all_reduce_time(n, 2 * psi, hw.inter_bandwidth, hw.inter_latency)
            row.append(f"{(ps['push_s'] + ps['pull_s']) / ring:.2f}")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(lines)
