"""Starting processes: torch's own launcher (torchrun) on one machine, with every store on loopback.

One launcher for everything that starts ranks: `llama-course train` and the Python `train()` (through
trainer.launch_run), `compare` (which calls `train()`), and `bench`'s multi-process measurements:

    torchrun(["-m", "llama_course.trainer", "--run-file", PATH], nproc=4, max_restarts=1)

runs `python -m llama_course.core.launch --torchrun --nnodes=1 --nproc-per-node=4 ... -m llama_course.trainer
--run-file PATH`, i.e. torch.distributed.run with its rendezvous on 127.0.0.1 and a free port. Values reach
the workers on their command line or in a file the caller writes (trainer.py's run file), never in
environment variables: those stay the user's (LLAMA_COURSE_TIMEOUT, LLAMA_COURSE_DEBUG, a profile path).

Why a wrapper: TCPStore listens on every interface by default. `torchrun_on_loopback` opens the
rendezvous store first on a socket bound to the endpoint's host (torchrun's own store then shares it:
multi-tenant stores share a server per port) and opens the store torchrun shares with the workers the
same way. Gloo binds the address the hostname resolves to (127.0.0.1 here; GLOO_SOCKET_IFNAME picks an
interface).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import torch.distributed as dist

from llama_course.core.distributed import listening_socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def under_launcher() -> bool:
    """True inside a torchrun-started worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def torchrun(module_argv: list, nproc: int, max_restarts: int = 0, env: dict | None = None) -> int:
    """Start `nproc` workers of `python <module_argv>` (e.g. ["-m", "llama_course.trainer", ...]) with torch's
    launcher on 127.0.0.1; returns its exit code (non-zero when a worker failed after the restarts)."""
    cmd = [sys.executable, "-m", "llama_course.core.launch", "--torchrun", "--nnodes=1",
           f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1", "--monitor-interval=0.2",
           *module_argv]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    run_env.setdefault("LOGLEVEL", "ERROR")
    run_env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    return subprocess.call(cmd, env=run_env)


def loopback_store(host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0):
    """A TCPStore server listening on `host` only (TCPStore alone listens on every interface).

    Returns (store, listening socket); keep the socket alive as long as the store.
    """
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]
    store = dist.TCPStore(host, port, None, True, timedelta(seconds=timeout_s), wait_for_workers=False,
                          multi_tenant=True, master_listen_fd=sock.fileno())
    return store, sock


def torchrun_on_loopback(argv: list) -> int:
    """torch.distributed.run with every store it opens listening on the rendezvous host only."""
    # imported when used: every replica and trainer imports this module (stores, ports), and torchrun's own
    # modules add ~1 s to each process's start on a loaded 2-core machine
    from torch.distributed import run as launcher
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    args = launcher.parse_args(argv)
    host, _, port = args.rdzv_endpoint.rpartition(":")
    keep = [loopback_store(host, int(port))]

    def create_server(self, master_addr, master_port):
        store, sock = loopback_store(master_addr, master_port)
        keep.append((store, sock))
        return store

    dynamic_rendezvous.DynamicRendezvousHandler._create_tcp_store_server = create_server
    launcher.main(argv)            # raises (exit code 1, with torchrun's failure report) when a worker fails
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--torchrun"]:
        sys.exit("usage: python -m llama_course.core.launch --torchrun [torchrun arguments] -m MODULE ...")
    sys.exit(torchrun_on_loopback(sys.argv[2:]))
