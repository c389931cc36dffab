"""torchft as the oracle: the course's tiny LLaMA trained with torchft's per-step fault tolerance.

fault_tolerance.py builds per-step fault tolerance for data parallelism by hand (a lighthouse, a quorum
before every step, survivors finish a step without a dead replica, a replacement heals live). This module
runs the same training with torchft 0.2.0 (pip install torchft==0.2.0), so the two can be compared:

* torchft's Rust **LighthouseServer** runs in the supervisor (this process) and forms the quorums;
  min_replicas = 1, so a lone survivor may train on; heartbeat timeout 1 s (as the course's lighthouse).
* each replica is one process with a **Manager** (its own Rust ManagerServer, which heartbeats to the
  lighthouse), a reconfigurable **ProcessGroupGloo** (a new gloo group whenever the quorum changes) and
  an **HTTPTransport** that serves its state to a healing replica.
* one step = Manager.start_quorum() (synchronous: a replica that is behind heals before its forward)
  -> the engine's train_step on this replica's shard of the global batch (the same BatchSampler.shard
  as fault_tolerance.py) with `TorchftSync` as its gradient sync: Manager.allreduce of the flat
  gradient and of the loss (averaged over the participants) -> Manager.should_commit() -> clip, AdamW
  step. If the all-reduce failed (a peer died) should_commit is False and the step is redone with the
  next quorum.

Every socket listens on 127.0.0.1 only. torchft's defaults do not: the Manager hard-codes its server's
bind to "[::]:port" (torchft/manager.py, Manager.__init__), the HTTP checkpoint server binds ("", 0) over
IPv6 (torchft/checkpointing/http_transport.py) and both advertise socket.gethostname(). Here the Manager
is built with a ManagerServer bound to 127.0.0.1 and the transport's server is an IPv4 loopback one;
the replica's TCPStore is the course's loopback_store, the lighthouse binds 127.0.0.1, and
GLOO_SOCKET_IFNAME=lo keeps gloo on loopback. Every wait has a timeout (Manager timeout / quorum
timeout / connect timeout, and the supervisor's timeout_s) so nothing hangs.

Start-up: replica 0 may ask for its first quorum before replica 1 exists; the lighthouse would then
form a quorum of one. So the first incarnations wait for each other (a file per replica in out_dir)
after their ManagerServer is up (heartbeating): from then on the lighthouse waits for both.

    python -m llama_course.coordination.fault_tolerance_torchft configs/tiny.yaml --out runs/torchft \\
        --set parallel.global_batch_size=8 --set parallel.micro_batch_size=2 --set seq_len=64 \\
        --set training.steps=20 --set 'faults.kill=[{rank: 1, step: 5}]'
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from unittest import mock

import torch

from llama_course.coordination.fault_tolerance import params_sha256, watch_replicas, write_config
from llama_course.coordination.fault_tolerance_comm import loopback_store
from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
from llama_course.core.distributed import Context
from llama_course.core.engine_protocol import EngineParts, GradientSync, StepAborted
from llama_course.core.model import build_model
from llama_course.core.optimizers import lr_at
from llama_course.core.train_step import Engine
from simulator.cli_args import Parser
from simulator.config import ConfigError, load_config

HOST = "127.0.0.1"


def loopback_manager(timeout_s: float, **kwargs):
    """torchft's Manager with its ManagerServer bound to 127.0.0.1 (Manager binds "[::]:port")."""
    from torchft import manager as tm

    real = tm.ManagerServer

    def server(**kw):
        return real(**{**kw, "bind": f"{HOST}:0", "hostname": HOST})

    t = timedelta(seconds=timeout_s)
    with mock.patch.object(tm, "ManagerServer", server):
        return tm.Manager(hostname=HOST, timeout=t, quorum_timeout=3 * t, connect_timeout=t, **kwargs)


def loopback_transport(timeout_s: float):
    """torchft's HTTPTransport serving checkpoints on 127.0.0.1 (it binds ("", 0) over IPv6)."""
    from http.server import ThreadingHTTPServer

    from torchft.checkpointing import http_transport

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET
        request_queue_size = 64

        def __init__(self, address, handler):
            super().__init__((HOST, 0), handler)

    class Transport(http_transport.HTTPTransport):
        def address(self) -> str:
            return f"http://{HOST}:{self._server.socket.getsockname()[1]}/checkpoint/"

    with mock.patch.object(http_transport, "_IPv6HTTPServer", Server):
        return Transport(timeout=timedelta(seconds=timeout_s), num_chunks=0)


# ---------------------------------------------------------------------------------------------
# one replica
# ---------------------------------------------------------------------------------------------

class TorchftSync(GradientSync):
    """torchft's Manager as the engine's gradient sync: its all-reduce averages over this step's
    participants; should_commit() (False when a peer died) is asked before the optimizer step, and a
    step that may not commit raises StepAborted (nothing applied; the runner redoes it)."""

    name = "torchft"

    def __init__(self, before_reduce=None):
        self.manager, self.before_reduce, self.participants = None, before_reduce, 0

    def reduce(self) -> None:
        if self.before_reduce:
            self.before_reduce()
        params = list(self.engine.base_model.parameters())
        flat = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).flatten() for q in params])
        self.manager.allreduce(flat).wait()                # mean over the quorum's participants
        self.participants = self.manager.num_participants()
        offset = 0
        for q in params:
            q.grad = flat[offset:offset + q.numel()].view_as(q).clone()
            offset += q.numel()

    def mean_loss(self, local: float) -> float:
        t = torch.tensor([local], dtype=torch.float32, device=self.engine.ctx.device)   # beside the gradients
        self.manager.allreduce(t).wait()
        return float(t)

    def finish_step(self, lr: float, norm: float, skipped: bool) -> dict:
        if not self.manager.should_commit():               # a peer died: redo the step with a new quorum
            raise StepAborted("torchft: the quorum changed during the step")
        return super().finish_step(lr, norm, skipped)


def run_replica(cfg, replica_id: int, incarnation: int, lighthouse: str, out_dir: str,
                timeout_s: float = 10.0) -> None:
    from torchft import ProcessGroupGloo

    torch.set_num_threads(1)
    R, p = cfg.parallel.dp, cfg.parallel
    torch.manual_seed(cfg.training.seed)
    seqs = pack(load_tokens(cfg).train, cfg.seq_len)
    sampler = BatchSampler(len(seqs), p.global_batch_size, cfg.training.seed)
    kills = {k["step"] for k in cfg.faults.kill if k["rank"] == replica_id} if incarnation == 0 else set()
    current = [0]

    def kill_if_due():                                     # after the backward, before the all-reduce
        if current[0] + 1 in kills:
            print(f"faults.kill: replica {replica_id} killed at step {current[0] + 1}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    sync = TorchftSync(before_reduce=kill_if_due)
    engine = Engine(cfg, Context(rank=replica_id, dp=1), build_model(cfg), parts=EngineParts("torchft", sync=sync))
    params = list(engine.base_model.parameters())

    store, _sock = loopback_store(HOST, 0, timeout_s)        # this replica group's store (one rank in it)
    manager = sync.manager = loopback_manager(
        timeout_s, pg=ProcessGroupGloo(timeout=timedelta(seconds=timeout_s)),
        load_state_dict=engine.load_state_dict, state_dict=engine.state_dict,
        min_replica_size=1, use_async_quorum=False, init_sync=False,
        store_addr=HOST, store_port=store.port, rank=0, world_size=1,
        lighthouse_addr=lighthouse, replica_id=f"replica_{replica_id}",
        checkpoint_transport=loopback_transport(timeout_s))
    done = os.path.join(out_dir, "done")
    if incarnation == 0:                                  # start together (see the module docstring)
        open(os.path.join(out_dir, f"ready_{replica_id}"), "w").close()
        deadline = time.time() + 6 * timeout_s
        while len(glob.glob(os.path.join(out_dir, "ready_*"))) < R:
            if time.time() > deadline:
                raise TimeoutError("the other replicas did not start")
            time.sleep(0.05)
    metrics = open(os.path.join(out_dir, f"replica_{replica_id}.jsonl"), "a")
    try:
        while manager.current_step() < cfg.training.steps and not os.path.exists(done):
            t0, before = time.perf_counter(), manager.current_step()
            manager.start_quorum()                        # synchronous: heals here when behind
            step = current[0] = manager.current_step()
            recovered = step != before
            if os.path.exists(done):                      # a late replacement: the run is over
                break
            batches = [get_batch(seqs, idx) for idx in sampler.shard(step, replica_id, R, p.micro_batch_size)]
            try:
                out = engine.train_step(batches, lr_at(step, cfg))
            except StepAborted:
                continue
            n = manager.current_step()                    # should_commit counted the step
            rec = {"step": n, "loss": out["loss"], "grad_norm": out["grad_norm"], "participants": sync.participants,
                   "quorum_id": manager._quorum_id, "step_time_s": time.perf_counter() - t0, "time": time.time(),
                   "replica": replica_id, "incarnation": incarnation, "pid": os.getpid()}
            if recovered:
                rec["recovered"] = True
            if n == cfg.training.steps:
                rec["params_sha256"] = params_sha256(params)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
        if manager.current_step() >= cfg.training.steps:
            open(done, "w").close()
    finally:
        metrics.close()
        manager.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------
# the supervisor: lighthouse + replicas
# ---------------------------------------------------------------------------------------------

def supervise(cfg, out_dir: str, replace: bool = False, heartbeat_timeout_s: float = 1.0,
              timeout_s: float = 300.0, op_timeout_s: float = 10.0) -> dict:
    """Run cfg.parallel.dp torchft replicas; a dead one is replaced at once when `replace`. Returns wall
    time, start time, exit codes and replacements (as fault_tolerance.supervise)."""

    os.environ.setdefault("RUST_LOG", "warn")             # torchft's Rust side logs every quorum at info
    from torchft.coordination import LighthouseServer

    config_path = write_config(cfg, out_dir)
    lighthouse = LighthouseServer(bind=f"{HOST}:0", min_replicas=1, join_timeout_ms=int(3000 * op_timeout_s),
                                  heartbeat_timeout_ms=int(1000 * heartbeat_timeout_s))
    address = f"http://{HOST}:{lighthouse.address().rsplit(':', 1)[1]}"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")

    def start(replica: int, incarnation: int):
        return subprocess.Popen([sys.executable, "-m", "llama_course.coordination.fault_tolerance_torchft", config_path,
                                 "--out", out_dir, "--replica", str(replica), "--incarnation", str(incarnation),
                                 "--lighthouse", address, "--op-timeout", str(op_timeout_s)], env=env)

    try:
        t0, codes, replacements = watch_replicas(
            start, cfg.parallel.dp, timeout_s, "torchft run",
            lambda r, done: replace and not os.path.exists(os.path.join(out_dir, "done")))
    finally:
        lighthouse.shutdown()
    return {"wall_s": time.time() - t0, "start": t0, "exit_codes": codes, "replacements": replacements}


def main(argv=None) -> int:
    ap = Parser(prog="python -m llama_course.coordination.fault_tolerance_torchft",
                description="The tiny LLaMA with torchft's per-step fault tolerance (CPU, gloo).")
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="runs/torchft")
    ap.add_argument("--replace", action="store_true", help="start a replacement for a dead replica")
    ap.add_argument("--timeout", type=float, default=300.0, help="the whole run (s)")
    ap.add_argument("--op-timeout", type=float, default=10.0, help="torchft's timeouts (s)")
    ap.add_argument("--replica", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--incarnation", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--lighthouse", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("torchft").setLevel(logging.ERROR)  # not the NCCL flight-recorder warning on CPU
    if args.replica is not None:
        run_replica(cfg, args.replica, args.incarnation, args.lighthouse, args.out, args.op_timeout)
        return 0
    summary = supervise(cfg, args.out, replace=args.replace, timeout_s=args.timeout, op_timeout_s=args.op_timeout)
    print(json.dumps(summary, indent=1))
    return 0 if all(c[-1] == 0 for c in summary["exit_codes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
