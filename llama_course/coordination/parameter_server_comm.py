"""Parameter-server communication: RPC calls between workers and servers, heartbeats, membership.

parameter_server.py holds the algorithm (a server's shard, its update rule, a worker's push/pull); this
module holds how the processes reach each other:

    worker -> server   push(worker, version, grads, norm, loss, lr) -> (version, weights, norm, loss, ...)
                       one `rpc_async` per server and step: the reply carries the updated shard back, so
                       push and pull are one round trip (TensorPipe over TCP; 1-3 ms on CPU)
                       heartbeat(worker) every `heartbeat_s`; finish(worker) at the end; settled() waits
                       until every worker finished or was declared dead
    worker 0 -> server get_state / set_state for checkpoints; staleness() for the histogram

RPC handlers run on the server's thread pool and are module functions (RPC pickles them by name): they
reach this process's shard through `SERVER[0]`, set by `parameter_server.serve`.

`lock_free_cost` measures what an update without the shard's lock costs (lost increments, torn
snapshots) with threads in one process, as RPC handler threads race on a lock-free server.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc


@dataclass(frozen=True)
class Heartbeats:
    """Failure detection timing: workers beat every `interval_s`; a server declares a worker silent for
    more than `dead_after_s` dead (the trainer's `heartbeat_s` / `dead_after_s` arguments)."""

    interval_s: float = 0.5
    dead_after_s: float = 5.0


SERVER: list = [None]
"""This process's ShardServer (servers only): the RPC handlers below call it."""


class HeartbeatMonitor:
    """Last time each worker was heard from; `dead()` lists those silent for more than `timeout` seconds.
    Finished workers (they said goodbye) are never declared dead. `clock` is injectable for tests."""

    def __init__(self, workers, timeout: float, clock=time.monotonic):
        self.clock, self.timeout = clock, timeout
        self.last = {w: clock() for w in workers}
        self.finished: set = set()
        self.declared: set = set()
        self.declared_at: dict = {}       # worker -> clock() when declared dead

    def beat(self, worker: int) -> None:
        self.last[worker] = self.clock()

    def finish(self, worker: int) -> None:
        self.finished.add(worker)

    def newly_dead(self) -> list:
        now = self.clock()
        new = [w for w, t in self.last.items()
               if w not in self.finished and w not in self.declared and now - t > self.timeout]
        self.declared.update(new)
        self.declared_at.update({w: now for w in new})
        return new

    def settled(self) -> bool:
        """Every worker has either said goodbye or been declared dead: nobody is left to wait for."""
        return all(w in self.finished or w in self.declared for w in self.last)


class Membership:
    """A ShardServer's bookkeeping of who is alive (mixed into it): heartbeats, goodbyes, the dead.
    Uses the server's lock, monitor, clocks and its version/parking rules."""

    def heartbeat(self, worker: int) -> None:
        self.monitor.beat(worker)

    def finish(self, worker: int) -> None:
        with self.lock:
            self.monitor.finish(worker)
            self.clocks.finish(worker)
            self._release_parked()
            self._maybe_settle()

    def wait_settled(self):
        """A future of the workers declared dead, resolved once every worker finished or was declared."""
        fut = torch.futures.Future()
        with self.lock:
            self.settled_waiters.append(fut)
            self._maybe_settle()
        return fut

    def _maybe_settle(self) -> None:
        if self.monitor.settled():
            dead = sorted(self.monitor.declared)
            for fut in self.settled_waiters:
                fut.set_result(dead)
            self.settled_waiters = []
            self.settled.set()

    def check_heartbeats(self) -> None:
        dead = self.monitor.newly_dead()
        if dead:
            print(f"parameter server {self.index}: worker(s) {dead} silent for more than {self.monitor.timeout:g} s: "
                  "declared dead; continuing without them", file=sys.stderr, flush=True)
            with self.lock:
                for w in dead:
                    self.clocks.finish(w)
                if self.sync == "bsp":
                    self._maybe_finish_version()
                self._release_parked()
                self._maybe_settle()


# ---- RPC entry points (run on the server's RPC threads) ----------------------------------------------
@rpc.functions.async_execution
def push(worker, version, grads, norm, loss, lr):
    return SERVER[0].push(worker, version, grads, norm, loss, lr)


def heartbeat(worker):
    SERVER[0].heartbeat(worker)


def finish(worker):
    SERVER[0].finish(worker)


@rpc.functions.async_execution
def settled():
    return SERVER[0].wait_settled()


def staleness():
    return dict(SERVER[0].staleness)


def get_state():
    return to_device(SERVER[0].state_dict(), "cpu")              # the reply crosses RPC on CPU


def set_state(state):
    SERVER[0].load_state_dict(state)


def init_rpc(name: str, rank: int, world_size: int) -> None:
    """RPC over the run's own (loopback) store: no second rendezvous port.

    `tcp://` rendezvous would start a TCPStore on rank 0 that listens on every interface; instead a
    `llamacourse://` handler hands RPC a prefix of the process group's store (already bound to
    MASTER_ADDR, 127.0.0.1 by default), and TensorPipe's own sockets stay on loopback (TP_SOCKET_IFNAME=lo)
    unless MASTER_ADDR names another host (multi-node)."""
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if host in ("127.0.0.1", "localhost"):
        os.environ.setdefault("TP_SOCKET_IFNAME", "lo")
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")

    def handler(url, **kwargs):
        store = dist.PrefixStore(f"llama_course/rpc_{restarts}", dist.distributed_c10d._get_default_store())
        yield store, rank, world_size

    # (re)register: an earlier run in this process registered its own store's handler
    importlib.import_module("torch.distributed.rendezvous")._rendezvous_handlers["llamacourse"] = handler
    timeout = float(os.environ.get("LLAMA_COURSE_TIMEOUT", "60"))
    # TensorPipe's shared-memory transport busy-polls a core per process: on a CPU machine that steals the
    # cores from training (a 2-worker step took 2x as long). libuv's TCP transport waits on epoll instead.
    options = rpc.TensorPipeRpcBackendOptions(init_method="llamacourse://", rpc_timeout=timeout,
                                              num_worker_threads=max(8, 2 * world_size),
                                              _transports=["uv"], _channels=["basic"])
    rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)


def lock_free_cost(threads: int = 2, updates: int = 200, size: int = 1 << 18) -> dict:
    """What dropping the lock costs, measured: `threads` threads each add 1 to every element of one shared
    tensor `updates` times (one 'gradient push' each), with and without a lock, while a reader takes
    snapshots. Returns, per mode, the share of increments lost (read-modify-write races) and the share of
    snapshots that mix two versions (torn reads), and the time taken."""
    out = {}
    for mode in ("lock", "lock_free"):
        w = torch.zeros(size, device="cpu")
        lock = threading.Lock() if mode == "lock" else None
        torn, snaps = [0], [0]
        done = threading.Event()

        def writer(w=w, lock=lock):       # bound now: threads run within this iteration
            for _ in range(updates):
                with lock if lock else nullcontext():
                    w.add_(1.0)

        def reader(w=w, lock=lock, done=done, snaps=snaps, torn=torn):
            while not done.is_set():
                with lock if lock else nullcontext():
                    s = w.clone()
                snaps[0] += 1
                torn[0] += int(s[0] != s[-1] or s.min() != s.max())

        start = time.perf_counter()
        workers = [threading.Thread(target=writer) for _ in range(threads)]
        r = threading.Thread(target=reader)
        r.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        done.set()
        r.join()
        expected = threads * updates * size
        out[mode] = {"lost_updates": 1 - float(w.double().sum()) / expected,
                     "torn_snapshots": torn[0] / max(snaps[0], 1), "snapshots": snaps[0],
                     "seconds": time.perf_counter() - start}
    return out


def to_device(obj, device):
    """`obj` with every tensor inside (dicts, lists, tuples) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
