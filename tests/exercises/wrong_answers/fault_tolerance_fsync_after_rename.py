"""atomic_write that renames first and fsyncs after: the same file in the end, but a crash between the two
publishes a file whose bytes may not be on disk."""

import os
import tempfile

from solutions.fault_tolerance import *  # noqa: F403

CONCEPT = "fault_tolerance"
WRONG = [{"exercise": "10.4", "fails": ["test_atomic_write_fsyncs_before_the_rename"], "message": "not fsynced",
          "why": "fsyncs after os.replace"}]


def atomic_write(path, write_fn):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.replace(tmp, path)
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
