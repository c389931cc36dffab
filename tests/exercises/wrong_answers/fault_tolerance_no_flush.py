"""atomic_write that fsyncs before flushing Python's buffer: os.fsync syncs an empty file."""

import os
import tempfile

from solutions.fault_tolerance import *  # noqa: F403

CONCEPT = "fault_tolerance"
WRONG = [{"exercise": "10.4", "fails": ["test_atomic_write_fsyncs_before_the_rename"], "message": "not fsynced",
          "why": "os.fsync before f.flush(): the bytes are still in the process's buffer"}]


def atomic_write(path, write_fn):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
