"""Strict mode's emulation of NCCL's rendezvous on gloo (used by core/wire.py's `batch_isend_irecv`).

On NCCL a send completes only once the peer has posted the matching receive, and the messages between two
ranks match in the order they were posted (tags are ignored). Gloo buffers and matches by tag, so code that
would hang or swap messages on NCCL runs fine on it. Here each batch of point-to-point operations
announces its operations (size, dtype, tag) to each peer in the rendezvous store, posts its sends, posts
each receive once the matching send has been announced (gloo aborts a process whose receive is smaller
than the send), and returns once every peer has announced the counterparts of all its operations:

    rank 0: batch [send F1 -> 1]        store: 0>1/3 = [send 4096 x float32 tag 7]
    rank 1: batch [send B0 -> 0]        store: 1>0/5 = [send 4096 x float32 tag 2]
    each reads the other's announcement: a send waiting for a send, nobody receives: StrictModeError
    ("deadlock with rank 1 ..."), at once, where NCCL would hang.

Counterparts must agree in order, size, dtype and tag; a peer that announces nothing fails at the timeout
(LLAMA_COURSE_TIMEOUT). A rank that breaks a rule says so in the store before it raises, so the ranks
waiting on it fail at once ("rank 2 broke strict mode while I waited for it: ...") instead of at the timeout: a chain of waiting
ranks (stage 0 waits on 1, which waits on 2, which deadlocked with 3) unwinds in milliseconds.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch.distributed as dist


class StrictModeError(RuntimeError):
    """A call that would hang or misbehave on NCCL (strict mode); the message names the rule broken."""


@dataclass
class _Peer:
    """What this process knows of one peer on one group: operations posted both ways and not yet matched
    (each (numel, dtype, tag)), matched in posting order."""

    posted: int = 0                                   # announcements this process made to the peer
    read: int = 0                                     # announcements of the peer read so far
    mine: dict = field(default_factory=lambda: {"send": deque(), "recv": deque()})
    theirs: dict = field(default_factory=lambda: {"send": deque(), "recv": deque()})
    lock: threading.Lock = field(default_factory=threading.Lock)


_PEERS: dict = {}                    # (group name, peer) -> _Peer


def forget_group(name: str | None) -> None:
    """Drop the matching state of group `name` (None: of every group) when it is destroyed."""
    for key in [k for k in _PEERS if name is None or k[0] == name]:
        del _PEERS[key]
_OPPOSITE = {"send": "recv", "recv": "send"}


def _timeout_s() -> float:
    return float(os.environ.get("LLAMA_COURSE_TIMEOUT", "60"))


def strict_batch(ops: list, isend, irecv) -> list:
    """batch_isend_irecv with NCCL's rendezvous: announce every operation to its peer in the rendezvous
    store, post the sends, and return once every peer has posted the counterparts (each receive is posted
    as soon as its matching send is seen: gloo aborts a process whose receive is smaller than the send)."""
    group = ops[0].group or dist.group.WORLD
    store = dist.distributed_c10d._get_default_store()
    name, me = group.group_name, dist.get_rank()
    works: list = [None] * len(ops)
    by_peer: dict = {}
    for index, o in enumerate(ops):
        direction = "send" if o.op in (isend, dist.isend) else "recv"
        by_peer.setdefault(int(o.peer), []).append(
            (direction, (o.tensor.numel(), str(o.tensor.dtype), int(o.tag)), index))
    for peer, mine in by_peer.items():
        state = _PEERS.setdefault((name, peer), _Peer())
        with state.lock:
            store.set(_key(name, me, peer, state.posted), json.dumps([(d, *desc) for d, desc, _ in mine]))
            state.posted += 1
            for direction, desc, index in mine:
                state.mine[direction].append((desc, index))

    def post(index: int) -> None:
        o = ops[index]
        if o.op in (isend, dist.isend):
            works[index] = isend(o.tensor, group=o.group, tag=o.tag, group_dst=o.group_peer)
        else:
            works[index] = irecv(o.tensor, group=o.group, tag=o.tag, group_src=o.group_peer)

    for index, o in enumerate(ops):
        if o.op in (isend, dist.isend):
            post(index)
    try:
        for peer in by_peer:
            _await_counterparts(store, name, me, peer, _PEERS[(name, peer)], post)
    except StrictModeError as e:       # the ranks waiting on this one fail at once, not at the timeout
        try:
            store.set(_failed_key(name, me), str(e))
        except Exception:  # noqa: BLE001 - a store that is gone leaves the peers to their timeout; raise mine
            pass
        raise
    return [w for w in works if w is not None]


def _key(group: str, src: int, dst: int, index: int) -> str:
    return f"llama_course/strict/{group}/{src}>{dst}/{index}"


def _failed_key(group: str, rank: int) -> str:
    return f"llama_course/strict/{group}/failed/{rank}"


def _await_counterparts(store, group: str, me: int, peer: int, state: _Peer, post) -> None:
    """Read the peer's announcements until each of my posted operations has its counterpart (posting each
    receive once its send is seen); raise on a disagreement, on a deadlock (the peer waits for an
    operation of mine that I have not posted) or after the timeout."""
    deadline, poll = time.monotonic() + _timeout_s(), 0.001
    with state.lock:
        while True:
            for direction in ("send", "recv"):        # match in posting order, both ways
                mine, theirs = state.mine[direction], state.theirs[_OPPOSITE[direction]]
                while mine and theirs:
                    (a, index), b = mine.popleft(), theirs.popleft()
                    if a != b:
                        raise StrictModeError(
                            f"strict mode (NCCL matches the messages between two ranks in posting order): my "
                            f"{direction} {'to' if direction == 'send' else 'from'} rank {peer} is {_describe(a)} "
                            f"but rank {peer}'s matching {_OPPOSITE[direction]} is {_describe(b)}")
                    if direction == "recv":
                        post(index)
            if not state.mine["send"] and not state.mine["recv"]:
                return
            key = _key(group, peer, me, state.read)
            if not store.check([key]):
                if state.theirs["send"] or state.theirs["recv"]:
                    raise StrictModeError(
                        f"strict mode (NCCL rendezvous): deadlock with rank {peer}: each of us posted a batch that "
                        f"waits for the other (rank {peer} posted {_pending(state)}; I wait for its counterpart of "
                        f"{_pending(state, mine=True)}): pair each send with the peer's receive in one "
                        "batch_isend_irecv")
                if store.check([_failed_key(group, peer)]):
                    raise StrictModeError(f"strict mode: rank {peer} broke strict mode while I waited for it: "
                                          + store.get(_failed_key(group, peer)).decode())
                if time.monotonic() > deadline:
                    raise StrictModeError(f"strict mode (NCCL rendezvous): rank {peer} posted no matching "
                                          f"operation within {_timeout_s():g} s; on NCCL this batch would hang")
                time.sleep(poll)
                poll = min(2 * poll, 0.05)
                continue
            for direction, *desc in json.loads(store.get(key)):
                state.theirs[direction].append(tuple(desc))
            store.delete_key(key)
            state.read += 1


def _describe(desc: tuple) -> str:
    numel, dtype, tag = desc
    return f"{numel} x {dtype} (tag {tag})"


def _pending(state: _Peer, mine: bool = False) -> str:
    if mine:
        return ", ".join(f"{d} {_describe(x)}" for d in ("send", "recv") for x, _ in state.mine[d])
    return ", ".join(f"{d} {_describe(x)}" for d in ("send", "recv") for x in state.theirs[d])
