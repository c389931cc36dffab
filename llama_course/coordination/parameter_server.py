"""Parameter server: server processes own the parameters; workers pull weights and push gradients.

    workers (ranks 0..N-1)                        servers (ranks N..N+k-1), shard j owns f_j Psi
    loop: forward/backward on its G/N sequences     on a push: aggregate, (clip), optimizer step,
          push grads of shard j --- RPC -->           version += 1, reply with the shard's new weights
          <-- new weights of shard j, version

The parameters are split tensor by tensor over k servers by a size-balanced assignment
(`simulator.parameter_server.assign_shards`: greedy, largest tensor first, to the emptiest server), so a
server's link carries f_j of the traffic; the largest tensor (the embedding) bounds how even it can be.
Transport is `torch.distributed.rpc` (TensorPipe; 1-3 ms a round trip on CPU): each push is one
`rpc_async` per server, and the reply carries the updated shard back, so push and pull are one round trip.
Tensors cross RPC on CPU, staged explicitly: a worker pushes `g.cpu()`, a server moves them to its
shard's device (the engine's: a GPU under NCCL), updates there, all-reduces its norm over the server group
there, and replies with CPU copies; TensorPipe then needs no device maps (strict mode checks it).

Cost per step (g bytes per gradient, e per weight; simulator/parameter_server.py times it):
worker sends Psi g and receives Psi e; server j receives N f_j Psi g and sends N f_j Psi e; server j stores
its shard and the optimizer state (AdamW: 4 + 8 bytes per parameter it owns); workers keep no optimizer.

Aggregation (`parallel.aggregation`), for the gradients g_1..g_m of one update (BSP: m = N, ASP/SSP: 1):
    mean   (1/m) sum g_i          BSP mean is exactly all-reduce data parallel: the same losses (tested)
    sum    sum g_i                 m times the step of mean for SGD; Adam is scale-free, so nearly the same
    ema    u <- b u + (1 - b) mean g_i,  b = 1 - 1/N: a low-pass filter over ~N pushes (damps stale noise)
Gradient clipping uses the norm of the aggregated gradient: in BSP the servers all-reduce their shards'
squared norms over a server group; in ASP/SSP the worker sends the norm of its own gradient.

When an update may happen is the synchronisation mode (`parallel.sync`, sync_async.py): BSP waits for
all N pushes of a version; ASP applies each push on arrival (staleness = server version - the version the
gradient was computed on); SSP blocks the reply to a worker that is more than `staleness` pushes ahead.

Concurrency: RPC handlers run on a thread pool, so two pushes can reach one shard at once. By default
an update holds the shard's lock; `parallel.lock_free: true` (ASP/SSP with SGD) drops it, Hogwild-style:
updates interleave element by element, a reply may copy a half-updated shard (counted as `torn_pulls`),
and `lock_free_cost()` measures what that costs: lost increments and torn snapshots.

Failure detection: every worker sends a heartbeat every HEARTBEAT_S; a server that hears nothing from a
worker for DEAD_AFTER_S declares it dead (one line on stderr) and, in BSP, completes versions without it
(the mean is then over the live workers). Restarting it is fault tolerance's job (checkpoint.py).

Seed questions: 2 (what a parameter server is), 26 (aggregating parameters), 29 (PS vs all-reduce).

    llama-course train configs/tiny.yaml --set parallel.strategy=parameter_server --set parallel.dp=2 \\
        --set parallel.num_servers=2 --set parallel.sync=asp
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from llama_course.coordination.sync_async import Clocks
from llama_course.coordination.sync_async import staleness_summary as summary
from llama_course.core.optimizers import optimizer_for_groups
from llama_course.engine import ENGINES, Engine
from simulator.parameter_server import assign_shards

HEARTBEAT_S = float(os.environ.get("LLAMA_COURSE_HEARTBEAT_S", "0.5"))
DEAD_AFTER_S = float(os.environ.get("LLAMA_COURSE_DEAD_AFTER_S", "5"))

_SERVER: ShardServer | None = None       # this process's shard (RPC handlers are module functions)


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


class ShardServer:
    """One server: its tensors of the model, their optimizer, the version counter and the sync rule."""

    def __init__(self, cfg, model, index: int, owner: list, n_workers: int, server_group, device=None):
        p = cfg.parallel
        self.cfg, self.index, self.n_workers, self.group = cfg, index, n_workers, server_group
        self.device = torch.device(device or "cpu")
        """The engine's device: the shard, its optimizer and the servers' all-reduce live there; tensors
        cross RPC on CPU (pushed gradients arrive as CPU tensors, replies carry CPU copies)."""
        named = [(n, q) for n, q in model.named_parameters()]
        self.params = [torch.nn.Parameter(q.detach().to(self.device, copy=True))
                       for (n, q), j in zip(named, owner) if j == index]
        decay = [q for q in self.params if q.dim() >= 2]
        no_decay = [q for q in self.params if q.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.training.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = optimizer_for_groups(cfg, [g for g in groups if g["params"]]) if self.params else None
        self.sync, self.aggregation, self.lock_free = p.sync, p.aggregation, p.lock_free
        self.ema_decay = 1 - 1 / n_workers
        self.ema = None
        self.version = 0
        self.lock = threading.Lock()
        self.clocks = Clocks(range(n_workers), p.staleness if p.sync == "ssp" else None)
        self.monitor = HeartbeatMonitor(range(n_workers), DEAD_AFTER_S)
        self.pending: dict = {}          # BSP: worker -> (grads, loss, lr, future) of the current version
        self.parked: list = []           # SSP: (worker, future, reply) held until the worker may proceed
        self.recent_losses: list = []
        self.staleness: dict = {}        # staleness -> count
        self.in_flight = 0
        self.torn_pulls = 0
        self.momentum = None
        self.settled_waiters: list = []  # futures of workers waiting for the end of the run (close)
        self.settled = threading.Event()

    # ---- pushes -----------------------------------------------------------------------------------
    def push(self, worker: int, version: int, grads: list, norm: float, loss: float, lr: float):
        fut = torch.futures.Future()
        grads = [g.to(self.device) for g in grads]            # from CPU (RPC) to the shard's device
        self.monitor.beat(worker)
        if self.sync == "bsp":
            with self.lock:
                self.pending[worker] = (grads, loss, lr, fut)
                self._maybe_finish_version()
            return fut
        with nullcontext() if self.lock_free else self.lock:
            stale = self.version - version
            self.staleness[stale] = self.staleness.get(stale, 0) + 1
            clip = self.cfg.training.grad_clip
            scale = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
            self._update([g * scale for g in grads] if scale != 1.0 else grads, lr)
            self.recent_losses = (self.recent_losses + [loss])[-self.n_workers:]
            reply = self._reply(norm, sum(self.recent_losses) / len(self.recent_losses), stale)
        with self.lock:
            self.clocks.tick(worker)
            self.parked.append((worker, fut, reply))
            self._release_parked()
        return fut

    def _maybe_finish_version(self) -> None:
        """BSP: once every live worker pushed this version, aggregate (in worker order), clip, step, reply."""
        live = [w for w in range(self.n_workers) if w not in self.monitor.declared]
        if not live or any(w not in self.pending for w in live):
            return
        workers = sorted(w for w in self.pending if w in live)
        grads = [self.pending[w][0] for w in workers]
        summed = [torch.stack([g[i] for g in grads]).sum(0) if len(grads) > 1 else grads[0][i]
                  for i in range(len(grads[0]))]
        agg = [s / len(workers) for s in summed] if self.aggregation != "sum" else summed
        sq = torch.tensor([float(sum(a.double().pow(2).sum() for a in agg))], dtype=torch.float64,
                          device=self.device)                # the server group's all-reduce: NCCL on GPUs
        if self.group is not None:
            dist.all_reduce(sq, group=self.group)
        norm = float(sq.sqrt())
        clip = self.cfg.training.grad_clip
        if clip > 0 and norm > clip:
            agg = [a * (clip / (norm + 1e-6)) for a in agg]
        self._update(agg, self.pending[workers[0]][2])
        losses = [self.pending[w][1] for w in workers]
        reply = self._reply(norm, sum(losses) / len(losses), 0)
        for w in workers:
            self.pending.pop(w)[3].set_result(reply)
        for w in list(self.pending):           # a worker declared dead after it pushed
            self.pending.pop(w)[3].set_result(reply)

    def _update(self, grads: list, lr: float) -> None:
        """Apply one aggregated gradient to the shard (the optimizer; Hogwild SGD when lock-free)."""
        self.in_flight += 1
        try:
            if self.aggregation == "ema":
                self.ema = [g.clone() for g in grads] if self.ema is None else \
                    [e.mul_(self.ema_decay).add_(g, alpha=1 - self.ema_decay) for e, g in zip(self.ema, grads)]
                grads = self.ema
            if not self.params:
                return
            if self.lock_free:
                self._hogwild_sgd(grads, lr)
            else:
                for q, g in zip(self.params, grads):
                    q.grad = g.to(q.dtype)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                for q in self.params:
                    q.grad = None
            self.version += 1
        finally:
            self.in_flight -= 1

    def _hogwild_sgd(self, grads: list, lr: float) -> None:
        """SGD with momentum, in place, no lock: m <- b m + g + wd w;  w <- w - lr m (optimizers.py's rule)."""
        t = self.cfg.training
        if self.momentum is None:
            self.momentum = [torch.zeros_like(q) for q in self.params]
        with torch.no_grad():
            for q, m, g in zip(self.params, self.momentum, grads):
                m.mul_(t.beta1).add_(g)
                if q.dim() >= 2 and t.weight_decay:
                    m.add_(q, alpha=t.weight_decay)
                q.add_(m, alpha=-lr)

    def _reply(self, norm: float, loss: float, stale: int) -> tuple:
        self.torn_pulls += int(self.in_flight > 0)        # another push is mid-update: a mixed snapshot
        weights = [q.detach().to("cpu", copy=True) for q in self.params]      # replies cross RPC on CPU
        return (self.version, weights, norm, loss, stale, self.torn_pulls)

    def _release_parked(self) -> None:
        """SSP/ASP: reply to every parked worker that the staleness bound now lets proceed."""
        keep = []
        for worker, fut, reply in self.parked:
            if self.clocks.may_proceed(worker):
                fut.set_result(reply)
            else:
                keep.append((worker, fut, reply))
        self.parked = keep

    # ---- checkpoint state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that decides this shard's next update: weights, optimizer, version, EMA, momentum,
        the per-worker clocks and the staleness histogram (taken under the lock: a consistent version)."""
        with self.lock:
            return {"params": [q.detach().clone() for q in self.params],
                    "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
                    "version": self.version, "ema": self.ema, "momentum": self.momentum,
                    "clock": dict(self.clocks.clock),
                    "staleness": dict(self.staleness)}

    def load_state_dict(self, state: dict) -> None:
        with self.lock:
            with torch.no_grad():
                for q, w in zip(self.params, state["params"]):
                    q.copy_(w)
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            self.version = state["version"]
            self.ema, self.momentum = _to(state["ema"], self.device), _to(state["momentum"], self.device)
            self.clocks.clock.update({int(w): c for w, c in state["clock"].items()})
            self.staleness = {int(s): c for s, c in state["staleness"].items()}

    # ---- membership -------------------------------------------------------------------------------
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
            print(f"parameter server {self.index}: worker(s) {dead} silent for more than {DEAD_AFTER_S:g} s: "
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
def _push(worker, version, grads, norm, loss, lr):
    return _SERVER.push(worker, version, grads, norm, loss, lr)


def _heartbeat(worker):
    _SERVER.heartbeat(worker)


def _finish(worker):
    _SERVER.finish(worker)


@rpc.functions.async_execution
def _settled():
    return _SERVER.wait_settled()


def _staleness():
    return dict(_SERVER.staleness)


def _get_state():
    return _to(_SERVER.state_dict(), "cpu")              # the reply crosses RPC on CPU


def _set_state(state):
    _SERVER.load_state_dict(state)


class ParameterServerEngine(Engine):
    """A worker rank (ranks < dp) or a server rank (ranks >= dp) of a parameter-server run."""

    name = "parameter_server"

    def __init__(self, cfg, ctx, model, tracer=None):
        super().__init__(cfg, ctx, model, tracer)
        global _SERVER
        p = cfg.parallel
        self.n_workers, self.k = p.dp, p.num_servers
        self.is_server = ctx.rank >= p.dp
        sizes = [q.numel() for q in self.base_model.parameters()]
        self.owner = assign_shards(sizes, self.k)
        server_ranks = list(range(p.dp, p.dp + self.k))
        group = dist.new_group(server_ranks) if self.k > 1 else None   # every rank takes part in new_group
        self.versions = [0] * self.k
        self.optimizer = None if not self.is_server else self.optimizer
        if self.is_server:
            _SERVER = ShardServer(cfg, self.base_model, ctx.rank - p.dp, self.owner, p.dp, group, ctx.device)
        name = f"server{ctx.rank - p.dp}" if self.is_server else f"worker{ctx.rank}"
        init_rpc(name, ctx.rank, ctx.world_size)
        self._stop = threading.Event()
        if not self.is_server:
            self._beats = threading.Thread(target=self._heartbeat_loop, daemon=True)
            self._beats.start()

    # ---- worker -----------------------------------------------------------------------------------
    def train_step(self, micro_batches: list, lr: float) -> dict:
        for q in self.base_model.parameters():
            q.grad = None
        local_loss = self.forward_backward(micro_batches)
        params = list(self.base_model.parameters())
        grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in params]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        with self.tracer.span("push", "comm"):
            futures = [rpc.rpc_async(f"server{j}", _push, args=(     # gradients staged through CPU
                self.ctx.rank, self.versions[j], [g.cpu() for g, o in zip(grads, self.owner) if o == j], norm,
                local_loss, lr)) for j in range(self.k)]
            replies = [f.wait() for f in futures]
        with torch.no_grad():
            for j, (version, weights, *_rest) in enumerate(replies):
                self.versions[j] = version
                for q, w in zip([q for q, o in zip(params, self.owner) if o == j], weights):
                    q.copy_(w)
        _, _, server_norm, loss, _, _ = replies[0]
        out = {"loss": loss, "grad_norm": server_norm if self.cfg.parallel.sync == "bsp" else norm,
               "skipped": False, "bytes_sent": sum(g.numel() * g.element_size() for g in grads)}
        if self.cfg.parallel.sync != "bsp":
            out["staleness"] = max(r[4] for r in replies)
            out["torn_pulls"] = sum(r[5] for r in replies)
        return out

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for j in range(self.k):
                try:
                    rpc.rpc_async(f"server{j}", _heartbeat, args=(self.ctx.rank,))
                except Exception:      # RPC shutting down
                    return

    def staleness_histogram(self) -> dict:
        """{staleness: pushes} as server 0 recorded it (asp/ssp)."""
        return rpc.rpc_sync("server0", _staleness)

    # ---- server -----------------------------------------------------------------------------------
    def run_server(self) -> None:
        """Serve until every worker has said goodbye or been declared dead; check heartbeats meanwhile."""
        watcher = threading.Thread(target=self._watch, daemon=True)
        watcher.start()
        _SERVER.settled.wait()
        dead = sorted(_SERVER.monitor.declared)
        if dead:          # the survivors got their answer from _settled and said so in the store
            self._wait_for_survivors([w for w in range(self.n_workers) if w not in dead])
        self._shutdown(graceful=not dead)

    def _wait_for_survivors(self, workers: list) -> None:
        try:
            self._store().wait([f"closed_{w}" for w in workers], timedelta(seconds=DEAD_AFTER_S + 30))
        except Exception:       # the store went with worker 0's exit: they are gone, either way
            pass

    def _store(self):
        return dist.PrefixStore(f"llama_course/ps_{self.ctx.restart_count}",
                                dist.distributed_c10d._get_default_store())

    def _shutdown(self, graceful: bool) -> None:
        """rpc.shutdown: graceful waits for every RPC peer, which a dead worker would never answer."""
        rpc.shutdown(graceful=graceful)
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(HEARTBEAT_S / 2):
            _SERVER.check_heartbeats()

    def close(self) -> None:
        """A worker says goodbye to every server and waits until the servers have heard from (or buried)
        every worker; then it leaves RPC: gracefully, or at once when a worker died (it would never answer).
        Servers leave RPC at the end of `run_server`."""
        if self.is_server:
            return
        self._stop.set()
        if self.ctx.rank == 0 and self.cfg.parallel.sync != "bsp":
            hist = self.staleness_histogram()
            print(f"parameter server: staleness over all pushes {summary(hist)}; histogram {dict(sorted(hist.items()))}",
                  file=sys.stderr, flush=True)
        for j in range(self.k):
            rpc.rpc_sync(f"server{j}", _finish, args=(self.ctx.rank,))
        dead = sorted({w for j in range(self.k) for w in rpc.rpc_sync(f"server{j}", _settled)})
        if dead:
            if self.ctx.rank == min(w for w in range(self.n_workers) if w not in dead):
                print(f"parameter server: worker(s) {dead} died during the run; the others finished without "
                      "them", file=sys.stderr, flush=True)
            self._store().set(f"closed_{self.ctx.rank}", "1")
        self._shutdown(graceful=not dead)

    # ---- checkpoints: the state lives on the servers; worker 0 fetches and writes it ------------------
    def state_dict(self) -> dict:
        """This worker's weights and versions, plus (worker 0 only) every server's shard state by RPC.
        In BSP this is one consistent version: every worker waits in the checkpoint before pushing again."""
        state = {"model": self.base_model.state_dict(), "versions": list(self.versions)}
        if self.ctx.rank == 0:
            state["servers"] = [rpc.rpc_sync(f"server{j}", _get_state) for j in range(self.k)]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Every worker takes the saved weights and versions; worker 0 hands each server its shard state;
        nobody pushes before every server is restored (a barrier over the workers)."""
        self.base_model.load_state_dict(state["model"])
        self.versions = list(state["versions"])
        if self.ctx.rank == 0:
            for j, server_state in enumerate(state["servers"]):
                rpc.rpc_sync(f"server{j}", _set_state, args=(_to(server_state, "cpu"),))
        if self.n_workers > 1:
            dist.barrier(group=self.ctx.dp_group)

    def checkpoint_writer(self) -> bool:
        return self.ctx.rank == 0

    def checkpoint_source_rank(self) -> int:
        return 0

    def checkpoint_group(self) -> tuple:
        """Checkpoints are collective over the workers only (servers sit in their RPC loop)."""
        return self.ctx.dp_group, list(range(self.n_workers))


def _to(obj, device):
    """`obj` with every tensor inside (dicts, lists, tuples) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


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

    import importlib

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


ENGINES["parameter_server"] = ParameterServerEngine
