"""Run a function on N gloo processes and collect what each rank returns (tests, exercises, labs).

    from llama_course.core.testing import spawn
    results = spawn(my_module.worker, 2, arg1, arg2, timeout=60)   # [rank0_result, rank1_result]

`fn(rank, world_size, *args)` must be importable by name (a module-level function, not a notebook cell).
Each process has RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set and a default gloo process group with a short
timeout already initialised (call `llama_course.core.distributed.init_distributed(dp, tp, pp)` for subgroups).
A rank that raises fails the whole call with that rank's traceback; a rank that hangs fails it after
`timeout` seconds (all processes are killed). Results travel back through a pipe, so keep them small
(tensors are fine).

Ranks are forked from a fork server (multiprocessing's "forkserver" start method) that imported torch and the
package once (`PRELOAD`), rather than each rank starting a fresh interpreter and importing them again: that
import is most of a short test's time on 2 cores. The server has never run a torch op (no thread pools to
inherit), and each rank takes the caller's environment and working folder as they are at the call, as a fresh
interpreter would. Where there is no fork server (Windows), each rank is a fresh interpreter.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, timeout_s, args, conn, env, last_barrier=True):
    os.environ.clear()                    # the caller's environment now, not the fork server's
    os.environ.update(env)                # (multiprocessing sets the working folder and sys.path)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "LLAMA_COURSE_TIMEOUT": str(timeout_s), "LLAMA_COURSE_DEVICE": "cpu"})
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        if rank == 0:                     # the store listens on 127.0.0.1 only
            from llama_course.core.distributed import listening_store

            store = listening_store("127.0.0.1", port, world_size, timedelta(seconds=timeout_s))
        else:
            store = dist.TCPStore("127.0.0.1", port, world_size, False, timedelta(seconds=timeout_s))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        from llama_course.core import wire

        wire.install()                    # recorder and strict mode (LLAMA_COURSE_STRICT), as init_distributed does
        wire.set_device("cpu")
        result = fn(rank, world_size, *args)
        if last_barrier and dist.is_initialized():
            dist.barrier()                # rank 0 hosts the store (strict mode's rendezvous): it leaves last
        conn.send(("ok", pickle.dumps(result)))
    except BaseException as e:  # report every failure to the parent, then exit
        conn.send(("error", f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
        conn.close()


PRELOAD = ["torch", "torch.distributed", "llama_course.trainer"]
"""Imported once by the fork server every rank is forked from (each rank would otherwise import them again)."""


def _context():
    """The fork server where the platform has one (Linux, macOS); elsewhere (Windows) a fresh interpreter per rank."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class SpawnError(RuntimeError):
    """A rank raised, died or timed out."""


PORT_RETRIES = 3
"""Starts of a spawn whose store port another process took between `_free_port` and rank 0's bind."""


def spawn(fn, world_size: int, *args, timeout: float = 120.0, env: dict | None = None, may_die=()) -> list:
    """Run fn(rank, world_size, *args) on world_size processes; return the list of results by rank.
    Ranks in `may_die` are expected to die (fault-injection tests): their result is None. A store port
    taken before rank 0 could bind it (EADDRINUSE) is retried on a fresh port: the whole of `fn` runs again
    (the error may come from a port `fn` chose itself), so `fn` must not trip over its own earlier attempt's
    files (write to a fresh folder per attempt)."""
    for attempt in range(PORT_RETRIES):
        try:
            return _spawn_once(fn, world_size, *args, timeout=timeout, env=env, may_die=may_die)
        except SpawnError as e:
            if "Address already in use" not in str(e) or attempt == PORT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _spawn_once(fn, world_size: int, *args, timeout: float, env: dict | None, may_die) -> list:
    ctx = _context()
    port = _free_port()
    collective_timeout = max(10.0, timeout / 2)
    pipes, procs = [], []
    for rank in range(world_size):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_entry, args=(fn, rank, world_size, port, collective_timeout, args, child,
                                                {**os.environ, **(env or {})}, not may_die),
                           daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    deadline = time.monotonic() + timeout
    results, pending = [None] * world_size, dict(enumerate(pipes))
    try:
        while pending:
            ready = wait(list(pending.values()), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise SpawnError(f"timed out after {timeout:.0f}s waiting for ranks {sorted(pending)}")
            for rank in [r for r, pipe in pending.items() if pipe in ready]:
                pipe = pending.pop(rank)
                try:
                    status, payload = pipe.recv()
                except EOFError:
                    procs[rank].join(1)
                    if rank in may_die:
                        continue
                    raise SpawnError(f"rank {rank} died (exit code {procs[rank].exitcode})") from None
                if status != "ok":                 # fail fast: the other ranks are killed below
                    raise SpawnError(payload)
                results[rank] = pickle.loads(payload)
        return results
    finally:
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()
