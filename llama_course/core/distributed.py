"""Process groups: who this process is, and which ranks it talks to for dp, tp and pp.

Ranks are laid out as a (pp, dp, tp) grid with tp fastest, as Megatron-LM does, so the ranks of one
tensor-parallel group are neighbours (on one node, over NVLink) and pipeline stages are the farthest apart
(simulator/spec.py computes the coordinates and groups, for the runtime and the simulator alike):

    rank = (pp_rank * dp + dp_rank) * tp + tp_rank

    pp=2, dp=2, tp=2:   stage 0: [0 1] [2 3]     stage 1: [4 5] [6 7]
                                 ^tp   ^tp
                        dp groups: {0,2} {1,3} {4,6} {5,7};  pp groups: {0,4} {1,5} {2,6} {3,7}

Context parallelism (cp > 1) is the fastest cp of the data-parallel dimension: `dp`, `dp_rank` and
`dp_group` count replicas (data shards x cp: the ranks that average gradients, shard ZeRO state and wrap
DDP/FSDP2, torchtitan's dp_shard_cp), `cp_group` the cp consecutive replicas sharing one sequence, and
`data_rank` / `data_shards` the share of the global batch a rank trains on:

    dp=2, cp=2:   replicas 0 1 2 3 (dp_rank);  data shards 0 0 1 1 (data_rank);  cp groups {0,1} {2,3}

Every process group gets a timeout (default 60 s, `LLAMA_COURSE_TIMEOUT`) so a lost peer fails a
collective with an error instead of hanging for gloo's default 30 minutes. Under torchrun the process
group is built on a store prefixed by the restart attempt, so workers restarted by `--max-restarts` never
read the dead attempt's addresses (see ../shared/reference/cpu-gloo-notes.md).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from llama_course.core import wire
from simulator import spec
from simulator.config import ConfigError


def default_timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("LLAMA_COURSE_TIMEOUT", "60")))


@dataclass
class Context:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "gloo"
    dp: int = 1
    tp: int = 1
    pp: int = 1
    dp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    dp_group: Any | None = None
    tp_group: Any | None = None
    pp_group: Any | None = None
    cp: int = 1
    """Context-parallel degree; dp above counts replicas = data shards x cp."""
    cp_rank: int = 0
    cp_group: Any | None = None
    """The cp replicas sharing one sequence (None when cp = 1)."""
    ep: int = 1
    """Expert-parallel degree: ep consecutive replicas split every block's experts."""
    ep_rank: int = 0
    ep_group: Any | None = None
    """The ep replicas that exchange tokens by all-to-all (None when ep = 1)."""
    edp_group: Any | None = None
    """Expert data-parallel: the replicas holding the same experts, stride ep (None when ep = 1 or they are
    one replica)."""
    mesh: Any | None = None
    """torch DeviceMesh of shape (pp, dp, tp) with names ("pp", "dp", "tp"), for the torch implementations."""
    restart_count: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def data_rank(self) -> int:
        """Which share of the global batch this rank trains on (its replica's data shard)."""
        return self.dp_rank // self.cp

    @property
    def data_shards(self) -> int:
        """Shares the global batch is cut into: replicas / cp."""
        return self.dp // self.cp


grid_coords = spec.coords
"""(pp_rank, dp_rank, tp_rank) of a global rank in the (pp, dp, tp) grid (simulator/spec.py, shared)."""


_LISTENERS: list = []          # sockets that must live as long as their stores


def listening_socket(host: str, port: int = 0):
    """A TCP socket listening on `host` only, for a TCPStore server (`master_listen_fd`): a plain
    TCPStore listens on every interface. Keep the socket alive as long as the store."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


def listening_store(host: str, port: int, world_size: int | None, timeout: timedelta):
    """A TCPStore server that listens on `host` only: 127.0.0.1 for one machine, the address the user
    gave (MASTER_ADDR) for many."""
    sock = listening_socket(host, port)
    _LISTENERS.append(sock)
    return dist.TCPStore(host, sock.getsockname()[1], world_size, True, timeout, wait_for_workers=False,
                         master_listen_fd=sock.fileno())


def choose_device(local_rank: int, local_world: int, preference: str, cuda_available: bool,
                  gpu_count: int) -> tuple:
    """(device, backend, note) of one process among `local_world` on this machine.

    preference (LLAMA_COURSE_DEVICE): `auto` (default) takes GPU `local_rank` with NCCL when every local
    process gets its own GPU, and otherwise falls back to the CPU with gloo, saying so in `note` (one line:
    the 2-process demo on a one-GPU laptop); `cuda` refuses that fallback with a ConfigError naming
    --nproc and the GPUs found (the CLI exits 2); `cpu` always takes the CPU."""
    if preference not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"LLAMA_COURSE_DEVICE: auto, cuda or cpu, got {preference!r}")
    enough = cuda_available and gpu_count >= local_world
    if preference == "cpu" or (preference == "auto" and not cuda_available):
        return torch.device("cpu"), "gloo", None
    if enough:
        return torch.device("cuda", local_rank), "nccl", None
    if preference == "cuda" and not cuda_available:
        raise ConfigError("LLAMA_COURSE_DEVICE: cuda, but torch sees no CUDA device here; use auto or cpu")
    found = f"{gpu_count} GPU{'s' if gpu_count != 1 else ''}"
    if preference == "cuda":
        raise ConfigError(f"--nproc {local_world}: {local_world} processes on this machine but {found} found; "
                          f"use --nproc {gpu_count} or fewer, or LLAMA_COURSE_DEVICE=auto to run on the CPU")
    return torch.device("cpu"), "gloo", (f"note: {local_world} processes on this machine but {found}: training on "
                                         f"the CPU with gloo (--nproc {gpu_count} uses the GPUs; "
                                         "LLAMA_COURSE_DEVICE=cuda refuses instead)")


def launcher_env(nproc: int) -> dict:
    """What the launcher of `nproc` local processes passes them: {} when each can have its own GPU (or
    there is none), {"LLAMA_COURSE_DEVICE": "cpu"} after printing the fallback's one line when there are
    too few GPUs; a ConfigError (exit 2) when LLAMA_COURSE_DEVICE=cuda refuses the fallback."""
    _, backend, note = choose_device(0, nproc, os.environ.get("LLAMA_COURSE_DEVICE", "auto"),
                                     torch.cuda.is_available(), torch.cuda.device_count())
    if note:
        print(note, file=sys.stderr, flush=True)
        return {"LLAMA_COURSE_DEVICE": "cpu"}
    return {}


def init_distributed(dp: int = 1, tp: int = 1, pp: int = 1, timeout: timedelta | None = None,
                     mesh_world: int | None = None, cp: int = 1, ep: int = 1) -> Context:
    """Join the process group (env:// from torchrun or our launcher; a one-rank group otherwise).

    Builds the dp/tp/pp groups when dp x tp x pp == world size, and the cp groups when cp > 1 (dp is then
    the replica count, data shards x cp, and cp must divide it), and the ep and expert data-parallel
    groups when ep > 1 (ep divides the replicas). A run with extra processes (parameter
    servers) passes mesh_world = dp x tp x pp and builds its own groups for the rest.
    """
    timeout = timeout or default_timeout()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device, backend, note = choose_device(local_rank, local_world, os.environ.get("LLAMA_COURSE_DEVICE", "auto"),
                                          torch.cuda.is_available(), torch.cuda.device_count())
    if note and local_rank == 0:
        print(note, file=sys.stderr, flush=True)
    if backend == "nccl":
        torch.cuda.set_device(device)
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    wire.install()                 # the wire recorder and strict mode (core/wire.py)
    wire.set_device(device)
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and world > 1:
            host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            if rank == 0 and not agent_store:
                base = listening_store(host, port, world, timeout)
            else:
                base = dist.TCPStore(host, port, world_size=None if agent_store else world, is_master=False,
                                     timeout=timeout, wait_for_workers=False)
            store = dist.PrefixStore(f"llama_course/attempt_{restarts}", base)
        else:
            if world != 1:
                raise RuntimeError("WORLD_SIZE > 1 needs MASTER_ADDR/MASTER_PORT (run under torchrun)")
            store = dist.HashStore()
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout,
                                device_id=device if backend == "nccl" else None)
    ctx = Context(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                  dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, restart_count=restarts)
    grid = mesh_world if mesh_world is not None else world
    if dp * tp * pp != grid:
        raise RuntimeError(f"dp x tp x pp = {dp * tp * pp} does not match {grid} processes")
    if cp < 1 or dp % cp:
        raise RuntimeError(f"cp {cp} does not divide the {dp} replicas (dp here counts data shards x cp)")
    if ep < 1 or dp % ep:
        raise RuntimeError(f"ep {ep} does not divide the {dp} replicas")
    if rank < grid:
        ctx.pp_rank, ctx.dp_rank, ctx.tp_rank = grid_coords(rank, dp, tp, pp)
        ctx.cp_rank = spec.cp_coords(ctx.dp_rank, cp)[1]
        ctx.ep_rank = ctx.dp_rank % ep
    ctx.dp_group, ctx.tp_group, ctx.pp_group = _grid_groups(ctx, grid)
    ctx.cp_group = _new_groups(ctx, spec.cp_groups(dp, tp, pp, cp)) if cp > 1 else None
    if ep > 1:
        ctx.ep_group = _new_groups(ctx, spec.ep_groups(dp, tp, pp, ep))
        ctx.edp_group = _new_groups(ctx, spec.ep_groups(dp, tp, pp, ep, expert_data=True)) if dp > ep else None
    return ctx


def _new_groups(ctx: Context, every: list):
    """new_group for every group of `every` (each rank calls it for every group, singletons included, in
    order; the whole world is WORLD); this rank's group, or None when it is in none of them."""
    mine = None
    for ranks in every:
        group = dist.group.WORLD if len(ranks) == ctx.world_size else dist.new_group(ranks, timeout=default_timeout())
        if ctx.rank in ranks:
            mine = group
    return mine


def _grid_groups(ctx: Context, grid: int) -> tuple:
    """new_group for every dp, tp and pp group (all ranks must call new_group for every group, in order)."""
    return tuple(_new_groups(ctx, spec.groups(name, ctx.dp, ctx.tp, ctx.pp)) for name in spec.GROUP_KINDS)


def device_mesh(ctx: Context):
    """A DeviceMesh (pp, dp, tp) over the whole world, built on first use (torch DDP/FSDP2/DTensor)."""
    if ctx.mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        ctx.mesh = init_device_mesh(ctx.device_type, (ctx.pp, ctx.dp, ctx.tp), mesh_dim_names=("pp", "dp", "tp"))
    return ctx.mesh


def group_size(group) -> int:
    """Size of a group (the world when group is None and a process group exists)."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def all_reduce_mean(value: float, group=None, device=None) -> float:
    """Mean of a Python float over a group (for logging losses and timings). group None: this rank alone
    (not the world: engines pass None when their dp degree is 1)."""
    if group is None or group_size(group) == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t, group=group)
    return float(t.item()) / dist.get_world_size(group)


def cleanup(barrier: bool = False) -> None:
    """Leave the process group. barrier: wait for every rank first (after a run that finished): rank 0
    hosts the rendezvous store, and a rank still reading it (strict mode's matching, backup workers'
    counters) would otherwise lose it mid-read ("Connection reset by peer")."""
    if dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
