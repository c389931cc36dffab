"""Spawned workers for tests/test_wire.py (importable by name, as llama_course.core.testing.spawn needs)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from llama_course.core import wire
from llama_course.parallel import collectives as C

N = 6          # elements per rank (divisible by 2 and 3: the ring's chunks are equal)


def record_every_kind(rank: int, world: int) -> dict:
    """One call of each kind (and the course's ring all-reduce) inside recording(); returns the log."""
    import torch.distributed.rpc as rpc

    from llama_course.coordination.parameter_server import init_rpc

    right, left = (rank + 1) % world, (rank - 1) % world
    x = torch.ones(N)
    with wire.recording() as log:
        dist.all_reduce(x)
        dist.reduce_scatter_tensor(torch.empty(N), torch.ones(world * N))
        dist.all_gather_into_tensor(torch.empty(world * N), torch.ones(N))
        dist.all_gather([torch.empty(N, dtype=torch.float64) for _ in range(world)], torch.ones(N, dtype=torch.float64))
        dist.broadcast(x, src=0)
        dist.all_to_all_single(torch.empty(world * N), torch.ones(world * N))
        got = torch.empty(N)
        for w in dist.batch_isend_irecv([dist.P2POp(dist.irecv, got, left), dist.P2POp(dist.isend, x * rank, right)]):
            w.wait()
    with wire.recording() as ring:
        C.ring_all_reduce(torch.ones(N), check=False)
    ddp = _ddp_step(rank)
    init_rpc(f"worker{rank}", rank, world)
    with wire.recording() as remote:
        rpc.rpc_sync(f"worker{right}", _numel, args=(torch.ones(N), torch.ones(3, dtype=torch.float64)))
    strict_rpc = ""
    wire.set_strict(True)
    try:
        rpc.rpc_sync(f"worker{right}", _numel, args=(torch.empty(2, device="meta"),))
    except wire.StrictModeError as e:
        strict_rpc = str(e)
    rpc.shutdown()
    return {"log": log.calls, "bytes": log.bytes_by_kind(), "ring": ring.bytes_by_kind(), "ring_calls": ring.calls,
            "received": got.tolist(), "rpc": remote.bytes_by_kind(), "strict_rpc": strict_rpc, "ddp": ddp}


def _ddp_step(rank: int) -> dict:
    """One DDP backward with and without watch_ddp: what the recorder sees, and the gradients (equal)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for watched in (False, True):
        torch.manual_seed(0)
        model = DDP(torch.nn.Linear(4, 3))
        if watched:
            wire.watch_ddp(model)
        with wire.recording() as log:
            model(torch.full((2, 4), float(rank + 1))).sum().backward()
        out[watched] = {"bytes": log.bytes_by_kind()["all_reduce"],
                        "grad": [p.grad.clone() for p in model.parameters()]}
    return out


def _numel(*tensors) -> int:
    return sum(t.numel() for t in tensors)


def _error(fn) -> str:
    try:
        fn()
    except wire.StrictModeError as e:
        return str(e)
    return ""


def strict_rules(rank: int, world: int) -> dict:
    """Each strict-mode rule broken once on a fresh group (2 ranks), and a correct exchange."""
    wire.set_strict(True)
    peer = 1 - rank
    out = {}

    def exchange(ops_of_rank):
        group = dist.new_group([0, 1])
        ops = [dist.P2POp(op, t, peer, group, tag=tag) for op, t, tag in ops_of_rank[rank]]
        for w in dist.batch_isend_irecv(ops):
            w.wait()

    out["unbatched_isend"] = _error(lambda: dist.isend(torch.ones(2), peer))
    out["unbatched_recv"] = _error(lambda: dist.recv(torch.ones(2), peer))
    wire.set_device("meta")
    out["device"] = _error(lambda: dist.all_reduce(torch.ones(2)))
    wire.set_device("cpu")
    # sizes disagree: rank 0 sends 4 elements, rank 1 expects 5
    out["size"] = _error(lambda: exchange({0: [(dist.isend, torch.ones(4), 0)], 1: [(dist.irecv, torch.ones(5), 0)]}))
    # tags disagree (NCCL would match the messages anyway and swap them)
    out["tag"] = _error(lambda: exchange({0: [(dist.isend, torch.ones(4), 1)], 1: [(dist.irecv, torch.ones(4), 2)]}))
    # both send first, each in its own batch: on NCCL both wait for a receive forever
    out["deadlock"] = _error(lambda: exchange({0: [(dist.isend, torch.ones(3), 0)], 1: [(dist.isend, torch.ones(3), 0)]}))
    # the same exchange paired in one batch each: completes
    got = torch.zeros(3)
    out["paired"] = _error(lambda: exchange({r: [(dist.isend, torch.full((3,), float(rank)), 0),
                                                 (dist.irecv, got, 0)] for r in (0, 1)}))
    out["paired_received"] = got.tolist()
    # a one-way message in single-operation batches on both sides: completes
    one = torch.zeros(2)
    out["one_way"] = _error(lambda: exchange({0: [(dist.isend, torch.full((2,), 7.0), 0)], 1: [(dist.irecv, one, 0)]}))
    out["one_way_received"] = one.tolist()
    return out


def strict_chain(rank: int, world: int) -> dict:
    """3 ranks: 1 and 2 deadlock (each sends first in a batch of its own) while 0 waits for 1 to take its
    message; 0 must fail as soon as 1 does, not at the timeout."""
    wire.set_strict(True)
    group = dist.new_group([0, 1, 2])
    peer = {0: 1, 1: 2, 2: 1}[rank]
    return {"error": _error(lambda: [w.wait() for w in dist.batch_isend_irecv(
        [dist.P2POp(dist.isend, torch.ones(3), peer, group)])])}


def world_sum(rank: int, world: int) -> float:
    """An all-reduce of every rank's number: the group really formed."""
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x)
    return float(x)


def where_i_run(rank, world_size, names):
    """What a rank sees of its start: the variables `names`, its working folder, its parent's pid."""
    return {"env": {n: os.environ.get(n) for n in names}, "cwd": os.getcwd(), "ppid": os.getppid()}
