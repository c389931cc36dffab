"""Exercises for lab 10, fault tolerance: how often to checkpoint, what failures cost, and checkpoints
that survive a crash at any moment.

A synchronous job on N GPUs stops whenever any of them fails: with exponential failures of mean M_gpu per
GPU, the job fails every M = M_gpu / N. It writes a checkpoint every tau seconds of work (cost C,
blocking), and after a failure pays a restart R and redoes the work since the last checkpoint.

Replace each `raise NotImplementedError(...)` with your code, then grade yourself:

    llama-course grade --only fault_tolerance      # or: pytest tests/exercises/test_fault_tolerance.py

Theory: docs/concepts/fault_tolerance.md; runtime: llama_course/core/checkpoint.py and fault_tolerance.py;
cost model: simulator/fault_tolerance.py.
"""

from __future__ import annotations


def young_daly_interval(checkpoint_s: float, mtbf_s: float) -> tuple:
    """Exercise 10.1: (Young's, Daly's) checkpoint interval in seconds of work.

    To first order the wasted share of time is  C/tau  (writing checkpoints)  +  tau/(2M)  (on average half
    an interval of work is redone per failure)  +  R/M. Minimise it over tau: that is Young's interval
    (1974). Daly (2006) refines it to Young's minus C when C < M/2, and to M otherwise.
    Raise ValueError for a non-positive checkpoint cost or MTBF.
    """
    raise NotImplementedError("Exercise 10.1: young_daly_interval")


def expected_goodput(interval_s: float, checkpoint_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """Exercise 10.2: useful work over wall time, exactly, for exponential failures (Daly 2006).

    One segment is tau of work followed by a checkpoint C; a failure anywhere in it (or during the restart
    R) throws the segment away. Its expected wall time is  E = M e^(R/M) (e^((tau + C)/M) - 1), so the
    goodput is tau / E. (Check: with M -> infinity it tends to tau / (tau + C).)
    """
    raise NotImplementedError("Exercise 10.2: expected_goodput")


def job_mtbf_hours(interruptions: int, days: float) -> tuple:
    """Exercise 10.3: (job MTBF in hours, per-GPU MTBF in years on 16,384 GPUs) from a failure count.

    Llama 3 405B saw 419 unexpected interruptions in 54 days of pre-training on 16,384 H100s. The job's
    MTBF is the time over the count; each GPU (with everything it depends on: host, NIC, switch port)
    fails N times less often than the job, so M_gpu = N x M. Use 365 days per year.
    Raise ValueError for a non-positive count or duration.
    """
    raise NotImplementedError("Exercise 10.3: job_mtbf_hours")


def atomic_write(path: str, write_fn) -> None:
    """Exercise 10.4: write a file so that a crash at any moment leaves either the old file or the new one.

    `write_fn(f)` writes the contents into an open binary file object f. Write into a temporary file in the
    *same folder* (a rename is atomic only within one file system), flush and `os.fsync` it (else the
    rename may reach the disk before the data), then `os.replace` it over `path`. If write_fn raises,
    remove the temporary file, leave `path` as it was, and re-raise. (Checkpoints in llama_course do
    this for every file, then rename the whole step folder and update `latest` the same way.)
    """
    raise NotImplementedError("Exercise 10.4: atomic_write")


def sharded_save(root: str, step: int, state: dict, group=None) -> str:
    """Exercise 10.5: every rank saves its own shard; the checkpoint appears only when all shards are there.

    Every rank of the group calls this at once with its own `state` (a dict of tensors). Layout:
        root/step_{step:08d}/rank_{r:05d}.pt     each rank's state (torch.save)
        root/step_{step:08d}/manifest.json       {"step": step, "world_size": n, "files": [names]}
        root/latest                              the folder name of the newest complete checkpoint
    Protocol: each rank writes its file into root/step_{step:08d}.tmp/ (rank 0 creates the folder; a
    barrier lets the others wait for it), a barrier, then rank 0 writes the manifest, renames the .tmp
    folder to its final name, and replaces `latest` atomically (exercise 10.4); a last barrier so no rank
    returns before the checkpoint is committed. Return the final folder's path on every rank.
    A crash before the rename leaves only a .tmp folder, which `sharded_load` ignores.
    """
    raise NotImplementedError("Exercise 10.5: sharded_save")


def sharded_load(root: str, rank: int):
    """Exercise 10.5 (continued): (step, this rank's state) from the checkpoint `latest` names, or None.

    Trust `latest` only if its folder has a manifest that lists this rank's file; otherwise fall back to
    the newest step_XXXXXXXX folder (never a .tmp one) that has such a manifest. Load with
    torch.load(..., weights_only=True): a checkpoint is data, never code. None when nothing is complete.
    """
    raise NotImplementedError("Exercise 10.5: sharded_load")
