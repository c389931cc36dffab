"""What an answer did, not what it says it did: the wire and the disk, for the graded tests.

The wire: `llama_course.core.wire` (the course's one recorder; it wraps torch.distributed) logs every call
a rank makes (kind, op, dtype, bytes handed to the call). `wire_summary(log)` turns a log into plain data a
spawned worker can send back to the test.

The disk: `DiskLog` patches `os.fsync`, `os.fdatasync`, `os.replace` and `os.rename` for a block and records,
in order and with a clock shared by every process of the machine (`time.monotonic_ns`):

    ("fsync", path, inode, size, t)      a file's data reached the disk (path and size at that moment)
    ("rename", src, dst, inode, t)        a file or folder took its new name

Inodes follow a file through its renames, so "was the file now named X fsynced, with its final size,
before the rename that published it?" is a question the events answer (`fsynced_before`).
"""

from __future__ import annotations

import os
import time


def strict_worker(wire) -> None:
    """Strict mode (NCCL's rules on gloo) for a graded worker that reports the answer's errors as results.

    A rank whose peer gave up (a StrictModeError: a deadlock on NCCL) waits in strict mode for a
    counterpart that never comes; it stops after a third of the launcher's timeout, so it reports too and
    meets the others at the launcher's final barrier before gloo's own timeout ends the run with a
    "connection closed" that would hide the cause."""
    wire.set_strict(True)
    os.environ["LLAMA_COURSE_TIMEOUT"] = f"{float(os.environ.get('LLAMA_COURSE_TIMEOUT', '60')) / 3:g}"


def wire_summary(log) -> dict:
    """{"bytes": bytes per kind, "calls": [(kind, op, dtype, nbytes, peer)]}: picklable, for a worker's result."""
    return {"bytes": dict(log.bytes_by_kind()),
            "calls": [(c.kind, c.op, c.dtype, int(c.nbytes), c.peer) for c in log.calls]}


def kinds_used(summary: dict) -> set:
    """The kinds of call (all_reduce, send, ...) that moved any bytes."""
    return {kind for kind, n in summary["bytes"].items() if n}


def calls_of(summary: dict, kind: str) -> list:
    """The bytes of each call of one kind, in order."""
    return [n for k, _, _, n, _ in summary["calls"] if k == kind]


def assert_ranks_finished(results: list) -> None:
    """Every rank returned rows and its last one holds no error (a spawned worker stops at its first)."""
    for rank, rows in enumerate(results):
        assert rows and not rows[-1]["error"], f"rank {rank}: {rows[-1]['error'] if rows else 'no result'}"


def _fd_of(fd) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


class DiskLog:
    """Record fsyncs and renames made in this process while the block runs (see the module docstring)."""

    def __init__(self):
        self.events: list = []

    def __enter__(self):
        self._saved = {name: getattr(os, name) for name in ("fsync", "fdatasync", "replace", "rename")}
        real = self._saved

        def fsync(fd):
            number = _fd_of(fd)
            st = os.fstat(number)
            try:
                path = os.readlink(f"/proc/self/fd/{number}")
            except OSError:
                path = "?"
            result = real["fsync"](fd)
            self.events.append(("fsync", path, st.st_ino, st.st_size, time.monotonic_ns()))
            return result

        def fdatasync(fd):
            number = _fd_of(fd)
            st = os.fstat(number)
            result = real["fdatasync"](fd)
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{number}"), st.st_ino, st.st_size,
                                time.monotonic_ns()))
            return result

        def renamer(name):
            def rename(src, dst, *args, **kwargs):
                inode = os.stat(src).st_ino if os.path.exists(src) else None
                result = real[name](src, dst, *args, **kwargs)
                self.events.append(("rename", os.path.abspath(src), os.path.abspath(dst), inode,
                                    time.monotonic_ns()))
                return result
            return rename

        os.fsync, os.fdatasync = fsync, fdatasync
        os.replace, os.rename = renamer("replace"), renamer("rename")
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(os, name, fn)
        return False


def renames_to(events: list, dst: str) -> list:
    """Rename events whose destination is `dst`, in order."""
    dst = os.path.abspath(dst)
    return [e for e in events if e[0] == "rename" and e[2] == dst]


def fsynced_before(events: list, inode: int, size: int, t: int) -> bool:
    """True if the file with this inode was fsynced holding `size` bytes before time t."""
    return any(e[0] == "fsync" and e[2] == inode and e[3] == size and e[4] < t for e in events)
