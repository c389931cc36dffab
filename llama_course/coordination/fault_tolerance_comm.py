"""Membership for per-step fault tolerance: a lighthouse, heartbeats, quorums, rebuilt process groups.

The pieces fault_tolerance.py trains with, in the manner of torchft (its Lighthouse and Manager):

    Lighthouse      one small coordinator (a thread of the supervisor) that owns a TCPStore bound to
                    127.0.0.1 (unless told otherwise). It watches heartbeats and forms quorums.
    ReplicaClient   one per replica: a heartbeat thread (store.add every heartbeat_s), `quorum(step)` to
                    ask for the members of the next step, `process_group(q)` that builds (or reuses) a gloo
                    group over exactly those members, `broadcast_state` for a joiner's live recovery.

A quorum forms when every live replica (heartbeat seen within heartbeat_timeout_s, counted on the
lighthouse's own clock) has asked for one, or when the oldest request has waited join_timeout_s (a hung
member is left out). A replica that dies stops heartbeating and is dropped after heartbeat_timeout_s; the
survivors' next quorum is smaller and gets a new id, so they build a new process group on a store prefix
of that id (never reusing the dead group's addresses). Each answer carries every member's committed
step: a member behind the maximum (a replacement that just started, or one whose commit failed) receives
the state of the lowest member at the maximum by a broadcast over the new group, before training on.

Cost per step: one store round trip for the request and one for the answer (milliseconds over TCP);
per failure: heartbeat_timeout_s to notice + one gloo group (a full mesh of connections) to build;
per join: the same + one broadcast of the model and optimizer state (3 x parameters for AdamW).

Trust model: anyone who can reach the store port can join, read, or disturb the run; peers trust each other
(as every torch.distributed job does). Keep the port on 127.0.0.1 or a private network.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def loopback_store(host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0):
    """A TCPStore server listening on `host` only (TCPStore alone listens on every interface).

    Returns (store, listening socket); keep the socket alive as long as the store.
    """
    from llama_course.core.distributed import listening_socket

    sock = listening_socket(host, port)
    port = sock.getsockname()[1]
    store = dist.TCPStore(host, port, None, True, timedelta(seconds=timeout_s), wait_for_workers=False,
                          multi_tenant=True, master_listen_fd=sock.fileno())
    return store, sock


@dataclass
class Quorum:
    quorum_id: int
    members: list          # replica ids, sorted
    steps: dict            # replica id -> committed step
    incarnations: dict     # replica id -> incarnation (a restarted replica has a new one)

    @property
    def max_step(self) -> int:
        return max(self.steps.values())

    @property
    def source(self) -> int:
        """The member that sends its state to those behind: the lowest id at the maximum step."""
        return min(r for r, s in self.steps.items() if s == self.max_step)

    def behind(self) -> list:
        return [r for r, s in self.steps.items() if s < self.max_step]


class Lighthouse:
    """Forms quorums from heartbeats and requests (run it in one process; it starts a thread)."""

    def __init__(self, replicas: int, host: str = "127.0.0.1", port: int = 0, heartbeat_timeout_s: float = 1.0,
                 join_timeout_s: float = 30.0, min_replicas: int = 1, poll_s: float = 0.005):
        self.replicas, self.timeout, self.join_timeout = replicas, heartbeat_timeout_s, join_timeout_s
        self.min_replicas, self.poll_s = min_replicas, poll_s
        self.store, self._sock = loopback_store(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        self.log: list = []          # (time, quorum_id, members) of every quorum formed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lighthouse", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        seen = {r: (0, 0.0) for r in range(self.replicas)}       # heartbeat counter, when it last changed
        quorum_id, last = 0, None
        first_request = None
        while not self._stop.is_set():
            now = time.monotonic()
            for r in range(self.replicas):
                count = self.store.add(f"hb/{r}", 0)
                if count != seen[r][0]:
                    seen[r] = (count, now)
            live = {r for r, (count, t) in seen.items() if count and now - t < self.timeout}
            requests = {}
            for r in range(self.replicas):
                if self.store.check([f"req/{r}"]):
                    requests[r] = json.loads(self.store.get(f"req/{r}"))
            asking = {r for r in requests if r in live}
            if asking and first_request is None:
                first_request = now
            ready = asking and (asking >= live or now - first_request > self.join_timeout)
            needed = self.min_replicas if quorum_id else self.replicas       # the first quorum waits for all
            if ready and (len(asking) >= needed or now - first_request > self.join_timeout):
                members = sorted(asking)
                key = [(r, requests[r]["incarnation"]) for r in members]
                if key != last:
                    quorum_id, last = quorum_id + 1, key
                answer = {"quorum_id": quorum_id, "members": members,
                          "steps": {str(r): requests[r]["step"] for r in members},
                          "incarnations": {str(r): requests[r]["incarnation"] for r in members}}
                for r in members:
                    self.store.delete_key(f"req/{r}")
                    self.store.set(f"ans/{r}/{requests[r]['token']}", json.dumps(answer))
                self.log.append((time.time(), quorum_id, members))
                first_request = None
            time.sleep(self.poll_s)


class ReplicaClient:
    """One replica's side: heartbeats, quorum requests, the process group of the current quorum."""

    def __init__(self, replica_id: int, host: str, port: int, incarnation: int = 0, heartbeat_s: float = 0.1,
                 pg_timeout_s: float = 10.0):
        self.id, self.incarnation = replica_id, incarnation
        self.store = dist.TCPStore(host, port, None, False, timedelta(seconds=60), wait_for_workers=False)
        self.heartbeat_s, self.pg_timeout = heartbeat_s, timedelta(seconds=pg_timeout_s)
        self._pg, self._pg_quorum = None, None
        self._tokens = 0
        self._stop = threading.Event()
        self._thread = None

    def start_heartbeat(self) -> None:
        """Start being live (call when ready to train: a live replica that never asks stalls quorums)."""
        hb = dist.TCPStore(self.store.host, self.store.port, None, False, timedelta(seconds=60),
                           wait_for_workers=False)

        def beat():
            while not self._stop.is_set():
                hb.add(f"hb/{self.id}", 1)
                self._stop.wait(self.heartbeat_s)

        self._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def quorum(self, step: int) -> Quorum:
        """Ask the lighthouse for the members of the next step (blocks until a quorum forms)."""
        self._tokens += 1
        token = f"{self.incarnation}.{self._tokens}"
        self.store.set(f"req/{self.id}", json.dumps({"step": step, "incarnation": self.incarnation, "token": token}))
        answer = json.loads(self.store.get(f"ans/{self.id}/{token}"))
        self.store.delete_key(f"ans/{self.id}/{token}")
        return Quorum(answer["quorum_id"], answer["members"], {int(k): v for k, v in answer["steps"].items()},
                      {int(k): v for k, v in answer["incarnations"].items()})

    def process_group(self, q: Quorum):
        """A gloo group over the quorum's members (rank = position in q.members); reused while q is the same."""
        if self._pg_quorum != q.quorum_id:
            self._pg = None
            prefix = dist.PrefixStore(f"pg/{q.quorum_id}", self.store)
            self._pg = dist.ProcessGroupGloo(prefix, q.members.index(self.id), len(q.members), self.pg_timeout)
            self._pg_quorum = q.quorum_id
        return self._pg

    def forget_group(self) -> None:
        """Drop the current group after a failed collective (the next quorum builds a new one)."""
        self._pg, self._pg_quorum = None, None


def all_reduce_sum(pg, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the group in place (gloo)."""
    pg.allreduce([tensor]).wait()
    return tensor


def broadcast_state(pg, root: int, state: dict | None) -> dict:
    """Broadcast a state dict from group rank `root` to every member (torch.save bytes; loaded weights_only)."""
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = root, 0
    if state is not None:
        buf = io.BytesIO()
        torch.save(state, buf)
        payload = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device="cpu")      # a gloo group: CPU
    else:
        size = torch.zeros(1, dtype=torch.int64, device="cpu")
    pg.broadcast([size], opts).wait()
    if state is None:
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device="cpu")
    pg.broadcast([payload], opts).wait()
    return torch.load(io.BytesIO(payload.numpy().tobytes()), map_location="cpu", weights_only=True)


def incarnation_from_env() -> int:
    return int(os.environ.get("LLAMA_COURSE_FT_INCARNATION", "0"))
