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

Failure detection: every worker sends a heartbeat every `Heartbeats.interval_s`; a server that hears
nothing from a worker for `dead_after_s` declares it dead (one line on stderr) and, in BSP, completes versions without it
(the mean is then over the live workers). Restarting it is fault tolerance's job (checkpoint.py).

In the runtime a server is a role, not an engine: the trainer runs `serve(cfg, ctx, model)` on ranks
N..N+k-1 instead of training; a worker's engine is the ordinary one with `ParameterServerSync` as its
gradient sync (its finish_step pushes and pulls; the worker holds no optimizer). RPC plumbing and the
heartbeat bookkeeping are in parameter_server_comm.py.

Seed questions: 2 (what a parameter server is), 26 (aggregating parameters), 29 (PS vs all-reduce).

    llama-course train configs/tiny.yaml --set parallel.strategy=parameter_server --set parallel.dp=2 \\
        --set parallel.num_servers=2 --set parallel.sync=asp
"""

from __future__ import annotations

import sys
import threading
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from llama_course.coordination import parameter_server_comm as comm
from llama_course.coordination.parameter_server_comm import (  # noqa: F401  (bench and the lab import init_rpc, lock_free_cost from here)
    HeartbeatMonitor,
    Heartbeats,
    init_rpc,
    lock_free_cost,
)
from llama_course.coordination.sync_async import Clocks
from llama_course.coordination.sync_async import staleness_summary as summary
from llama_course.core.engine_protocol import GradientSync
from llama_course.core.optimizers import optimizer_for_groups
from simulator.parameter_server import assign_shards


class ShardServer(comm.Membership):
    """One server: its tensors of the model, their optimizer, the version counter and the sync rule."""

    def __init__(self, cfg, model, index: int, owner: list, n_workers: int, server_group, dead_after_s: float = 5.0,
                 device=None):
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
        self.monitor = HeartbeatMonitor(range(n_workers), dead_after_s)
        self.pending: dict = {}          # BSP: worker -> (grads, loss, lr, future) of the current version
        self.parked: list = []           # SSP: (worker, future, (norm, loss, stale)) until the worker may proceed
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
            said = (norm, sum(self.recent_losses) / len(self.recent_losses), stale)
        with self.lock:
            self.clocks.tick(worker)
            self.parked.append((worker, fut, said))
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
        """SSP/ASP: reply to every parked worker that the staleness bound now lets proceed, with the weights as
        they are now: a worker held back at clock c until the slowest pushed its clock c - s update reads that
        update (SSP's guarantee; weights taken at its own push would miss it, and its next push could then be
        (s + 2)(N - 1) versions stale, past the bound)."""
        keep = []
        for worker, fut, said in self.parked:
            if self.clocks.may_proceed(worker):
                fut.set_result(self._reply(*said))
            else:
                keep.append((worker, fut, said))
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
            self.ema = comm.to_device(state["ema"], self.device)
            self.momentum = comm.to_device(state["momentum"], self.device)
            self.clocks.clock.update({int(w): c for w, c in state["clock"].items()})
            self.staleness = {int(s): c for s, c in state["staleness"].items()}


def server_ranks(cfg) -> list:
    """The ranks that serve (after the dp workers); the trainer runs `serve` on them instead of training."""
    p = cfg.parallel
    return list(range(p.dp, p.dp + p.num_servers)) if p.strategy == "parameter_server" else []


def _server_group(cfg):
    """The servers' own group (BSP all-reduces the aggregated norm over it); every rank takes part."""
    ranks = server_ranks(cfg)
    return dist.new_group(ranks) if len(ranks) > 1 else None


def serve(cfg, ctx, model, heartbeats: Heartbeats = Heartbeats()) -> None:
    """A server rank's whole run: hold shard ctx.rank - dp of `model`, answer pushes until every worker has
    said goodbye or been declared dead (heartbeats checked meanwhile), then leave RPC."""
    p = cfg.parallel
    owner = assign_shards([q.numel() for q in model.parameters()], p.num_servers)
    server = comm.SERVER[0] = ShardServer(cfg, model, ctx.rank - p.dp, owner, p.dp, _server_group(cfg),
                                          heartbeats.dead_after_s, ctx.device)
    comm.init_rpc(f"server{ctx.rank - p.dp}", ctx.rank, ctx.world_size)
    stop = threading.Event()

    def watch():
        while not stop.wait(heartbeats.interval_s / 2):
            server.check_heartbeats()

    threading.Thread(target=watch, daemon=True).start()
    server.settled.wait()
    dead = sorted(server.monitor.declared)
    if dead:          # the survivors got their answer from settled() and said so in the store
        try:
            _store(ctx).wait([f"closed_{w}" for w in range(p.dp) if w not in dead],
                             timedelta(seconds=heartbeats.dead_after_s + 30))
        except Exception:       # the store went with worker 0's exit: they are gone, either way
            pass
    rpc.shutdown(graceful=not dead)     # graceful waits for every RPC peer, which a dead worker never answers
    stop.set()


def _store(ctx):
    return dist.PrefixStore(f"llama_course/ps_{ctx.restart_count}", dist.distributed_c10d._get_default_store())


class ParameterServerSync(GradientSync):
    """A worker's gradient sync: push this rank's gradient to the servers, pull the updated weights back
    (the optimizer lives on the servers: the worker has none)."""

    name = "parameter_server"
    span = "push"
    owns_optimizer = False

    def __init__(self, cfg, ctx, heartbeats: Heartbeats = Heartbeats()):
        self.cfg, self.ctx, self.heartbeats = cfg, ctx, heartbeats
        self.n_workers, self.k = cfg.parallel.dp, cfg.parallel.num_servers

    def wrap(self, model):
        self.owner = assign_shards([q.numel() for q in model.parameters()], self.k)
        _server_group(self.cfg)
        self.versions = [0] * self.k
        comm.init_rpc(f"worker{self.ctx.rank}", self.ctx.rank, self.ctx.world_size)
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat_loop, daemon=True).start()
        return model

    def loss_group(self):
        return None                                     # the servers reply with the mean loss

    def finish_step(self, lr: float, norm: float, skipped: bool) -> dict:
        """Push and pull (always: a BSP server waits for every worker's push; it clips and steps)."""
        params = list(self.engine.base_model.parameters())
        grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in params]
        with self.engine.tracer.span("push", "comm"):
            futures = [rpc.rpc_async(f"server{j}", comm.push, args=(     # gradients staged through CPU
                self.ctx.rank, self.versions[j], [g.cpu() for g, o in zip(grads, self.owner) if o == j], norm,
                self.local_loss, lr)) for j in range(self.k)]
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

    def mean_loss(self, local: float) -> float:
        self.local_loss = local                         # pushed with the gradient; the reply has the mean
        return local

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeats.interval_s):
            for j in range(self.k):
                try:
                    rpc.rpc_async(f"server{j}", comm.heartbeat, args=(self.ctx.rank,))
                except Exception:      # RPC shutting down
                    return

    def staleness_histogram(self) -> dict:
        """{staleness: pushes} as server 0 recorded it (asp/ssp)."""
        return rpc.rpc_sync("server0", comm.staleness)

    def close(self) -> None:
        """Say goodbye to every server and wait until the servers have heard from (or buried) every worker;
        then leave RPC: gracefully, or at once when a worker died (it would never answer)."""
        self._stop.set()
        if self.ctx.rank == 0 and self.cfg.parallel.sync != "bsp":
            hist = self.staleness_histogram()
            print(f"parameter server: staleness over all pushes {summary(hist)}; histogram {dict(sorted(hist.items()))}",
                  file=sys.stderr, flush=True)
        for j in range(self.k):
            rpc.rpc_sync(f"server{j}", comm.finish, args=(self.ctx.rank,))
        dead = sorted({w for j in range(self.k) for w in rpc.rpc_sync(f"server{j}", comm.settled)})
        if dead:
            if self.ctx.rank == min(w for w in range(self.n_workers) if w not in dead):
                print(f"parameter server: worker(s) {dead} died during the run; the others finished without "
                      "them", file=sys.stderr, flush=True)
            _store(self.ctx).set(f"closed_{self.ctx.rank}", "1")
        rpc.shutdown(graceful=not dead)

    # ---- checkpoints: the state lives on the servers; worker 0 fetches and writes it ------------------
    def state_dict(self) -> dict:
        """This worker's weights and versions, plus (worker 0 only) every server's shard state by RPC.
        In BSP this is one consistent version: every worker waits in the checkpoint before pushing again."""
        state = {"model": self.engine.base_model.state_dict(), "versions": list(self.versions)}
        if self.ctx.rank == 0:
            state["servers"] = [rpc.rpc_sync(f"server{j}", comm.get_state) for j in range(self.k)]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Every worker takes the saved weights and versions; worker 0 hands each server its shard state;
        nobody pushes before every server is restored (a barrier over the workers)."""
        self.engine.base_model.load_state_dict(state["model"])
        self.versions = list(state["versions"])
        if self.ctx.rank == 0:
            for j, server_state in enumerate(state["servers"]):
                rpc.rpc_sync(f"server{j}", comm.set_state, args=(comm.to_device(server_state, "cpu"),))
        if self.n_workers > 1:
            dist.barrier(group=self.ctx.dp_group)

    def checkpoint_writer(self) -> bool:
        return self.ctx.rank == 0

    def checkpoint_source_rank(self) -> int:
        return 0

    def checkpoint_group(self) -> tuple:
        """Checkpoints are collective over the workers only (servers sit in their RPC loop)."""
        return self.ctx.dp_group, list(range(self.n_workers))
