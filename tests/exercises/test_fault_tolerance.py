"""Graded tests for the fault-tolerance exercises (labs/exercises/fault_tolerance.py), points per test.

Closed forms and direct checks written here; exercise 10.5 on 2 gloo processes (one launch).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorders import DiskLog, fsynced_before, renames_to  # noqa: E402

# Exercise 10.1: young_daly_interval -------------------------------------------------------------------------

@pytest.mark.points(2, exercise="10.1")
def test_young_daly_interval(exercise):
    young, daly = exercise.young_daly_interval(60.0, 3 * 3600.0)
    assert young == pytest.approx(math.sqrt(2 * 60 * 10800)) and daly == pytest.approx(young - 60)
    young, daly = exercise.young_daly_interval(100.0, 150.0)          # C >= M/2: checkpoint every M
    assert young == pytest.approx(math.sqrt(2 * 100 * 150)) and daly == pytest.approx(150.0)
    young, daly = exercise.young_daly_interval(0.5, 0.75)             # any positive cost and MTBF, however small
    assert young == pytest.approx(math.sqrt(2 * 0.5 * 0.75)) and daly == pytest.approx(0.75)


@pytest.mark.points(1, exercise="10.1")
def test_young_interval_minimises_first_order_waste(exercise):
    c, m, r = 40.0, 5000.0, 300.0
    young, _ = exercise.young_daly_interval(c, m)
    waste = lambda tau: c / tau + tau / (2 * m) + r / m          # noqa: E731
    assert waste(young) <= min(waste(young * f) for f in (0.5, 0.8, 0.95, 1.05, 1.25, 2.0))
    with pytest.raises(ValueError):
        exercise.young_daly_interval(0.0, 100.0)
    with pytest.raises(ValueError):
        exercise.young_daly_interval(60.0, 0.0)


@pytest.mark.points(1, exercise="10.1")
def test_daly_switches_at_half_the_mtbf(exercise):
    """M = 100 s: C = 40 s < M/2 gives Young's sqrt(2 x 40 x 100) = 89.4 s minus C = 49.4 s; C = 50 s is
    not below M/2: every M."""
    assert exercise.young_daly_interval(40.0, 100.0)[1] == pytest.approx(math.sqrt(8000) - 40)
    assert exercise.young_daly_interval(50.0, 100.0) == pytest.approx((100.0, 100.0))


# Exercise 10.2: expected_goodput ----------------------------------------------------------------------------

@pytest.mark.points(2, exercise="10.2")
def test_expected_goodput_closed_form(exercise):
    for tau, c, m, r in [(600, 30, 3 * 3600, 600), (60, 1.4, 11160, 600), (1e4, 100, 5e3, 0)]:
        expected = tau / (m * math.exp(r / m) * (math.exp((tau + c) / m) - 1))
        assert exercise.expected_goodput(tau, c, m, r) == pytest.approx(expected, rel=1e-9)


@pytest.mark.points(1, exercise="10.2")
def test_expected_goodput_limits(exercise):
    assert exercise.expected_goodput(100.0, 10.0, 1e12) == pytest.approx(100 / 110, rel=1e-6)
    g = [exercise.expected_goodput(t, 60, 3 * 3600, 600) for t in (60, 300, 1138, 5000, 20000)]
    assert g[2] == max(g), "the goodput peaks near Young's interval"


# Exercise 10.3: job_mtbf_hours ------------------------------------------------------------------------------

@pytest.mark.points(2, exercise="10.3")
def test_job_mtbf_llama3(exercise):
    job, gpu_years = exercise.job_mtbf_hours(419, 54)
    assert job == pytest.approx(54 * 24 / 419)                     # ~3.09 h
    assert gpu_years == pytest.approx(54 * 24 / 419 * 16384 / 8760)  # ~5.8 years per GPU
    assert exercise.job_mtbf_hours(1, 0.5)[0] == pytest.approx(12.0)   # one interruption in half a day
    for interruptions, days in [(0, 54), (419, 0), (-1, 54), (419, -1)]:   # none, or no time: no MTBF
        with pytest.raises(ValueError):
            exercise.job_mtbf_hours(interruptions, days)


# Exercise 10.4: atomic_write --------------------------------------------------------------------------------

NEW_STATE = b"new state " * 100


@pytest.mark.points(1, exercise="10.4")
def test_atomic_write_writes_beside_the_target(exercise, tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old state")
    with DiskLog() as disk:
        exercise.atomic_write(str(path), lambda f: f.write(NEW_STATE))
    assert path.read_bytes() == NEW_STATE
    published = renames_to(disk.events, str(path))
    assert published, "publish the new file with one os.replace (or os.rename) over the target"
    assert os.path.dirname(published[-1][1]) == str(tmp_path), "write the temporary file beside the target"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.bin"]


@pytest.mark.points(2, exercise="10.4")
def test_atomic_write_fsyncs_before_the_rename(exercise, tmp_path):
    """Recorded fsyncs and renames: the file now at `path` had all its bytes fsynced before the rename that
    put it there (flush first: os.fsync does not see what Python still buffers). An fsync after the rename
    leaves a window in which a crash publishes an empty or partial file under the final name."""
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old state")
    with DiskLog() as disk:
        exercise.atomic_write(str(path), lambda f: f.write(NEW_STATE))
    published = renames_to(disk.events, str(path))
    assert published, "publish the new file with one os.replace (or os.rename) over the target"
    inode, t = os.stat(path).st_ino, published[-1][4]
    assert published[-1][3] == inode, "the file at the target is not the one the last rename published"
    assert fsynced_before(disk.events, inode, len(NEW_STATE), t), \
        f"the {len(NEW_STATE)} bytes were not fsynced before the rename (events: {disk.events})"


@pytest.mark.points(2, exercise="10.4")
def test_atomic_write_crash_keeps_the_old_file(exercise, tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old state")

    def crash(f):
        f.write(b"half of the new st")
        raise KeyboardInterrupt("killed in the middle of a write")

    with pytest.raises(KeyboardInterrupt):
        exercise.atomic_write(str(path), crash)
    assert path.read_bytes() == b"old state"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.bin"], "the temporary file must be removed"


# Exercise 10.5: sharded_save / sharded_load on 2 gloo processes --------------------------------------------

@pytest.fixture(scope="module")
def sharded_results(exercise, tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import workers_fault_tolerance as workers

    from llama_course.core.testing import spawn

    root = str(tmp_path_factory.mktemp("sharded"))
    return spawn(workers.check_sharded_checkpoint, 2, exercise.__name__, root, timeout=90), root


@pytest.mark.points(2, exercise="10.5")
def test_sharded_save_layout(sharded_results):
    results, root = sharded_results
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["paths"] == [os.path.join(root, "step_00000003"), os.path.join(root, "step_00000007")]
    import json

    manifest = json.load(open(os.path.join(root, "step_00000007", "manifest.json")))
    assert manifest["step"] == 7 and manifest["world_size"] == 2
    assert sorted(manifest["files"]) == ["rank_00000.pt", "rank_00001.pt"]
    assert not [f for f in os.listdir(root) if f.startswith("step_00000007.tmp")]


@pytest.mark.points(3, exercise="10.5")
def test_sharded_save_commits_in_order(sharded_results):
    """The order of fsyncs and renames, recorded on every rank (one machine-wide clock): every file of the
    step folder (each rank's shard, the manifest) fsynced with its final size before the one rename that
    publishes the folder; then `latest` replaced by a rename, its new bytes fsynced first. `latest` naming a
    folder that does not exist yet, or a manifest that may not be on disk, is a checkpoint a crash breaks."""
    results, root = sharded_results
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
    events = sorted((e for out in results for e in out["disk"]), key=lambda e: e[-1])
    for step, snapshot in zip((3, 7), results[0]["snapshots"]):
        folder = os.path.join(root, f"step_{step:08d}")
        published = renames_to(events, folder)
        assert published, f"step {step}: the folder must appear by one rename of its .tmp folder"
        t_folder = published[-1][4]
        files = {p: v for p, v in snapshot.items() if os.path.dirname(p) == folder}
        assert len(files) == 3, f"step {step}: expected 2 shards and a manifest, found {sorted(files)}"
        for path, (inode, size) in files.items():
            assert fsynced_before(events, inode, size, t_folder), \
                f"step {step}: {os.path.basename(path)} was not fsynced before the folder was renamed"
        latest = os.path.join(root, "latest")
        moved = [e for e in renames_to(events, latest) if e[4] > t_folder]
        assert moved, f"step {step}: 'latest' must be replaced by a rename after the folder's rename"
        inode, size = snapshot[latest]
        assert moved[0][3] == inode and fsynced_before(events, inode, size, moved[0][4]), \
            f"step {step}: the new 'latest' was not fsynced before its rename"


@pytest.mark.points(2, exercise="10.5")
def test_sharded_load_resumes_the_last_complete(sharded_results):
    results, _ = sharded_results
    for rank, out in enumerate(results):
        assert not out["error"], f"rank {rank}: {out['error']}"
        assert out["loads"]["after_3"] == (3, True) and out["loads"]["after_7"] == (7, True)
        assert out["loads"]["after_crash"] == (7, True), f"rank {rank}: a .tmp folder is not a checkpoint"
        assert out["loads"]["bad_latest"] == (7, True), f"rank {rank}: 'latest' without a manifest must be skipped"


def _checkpoint(root, step, files, present):
    """A step folder by hand: a manifest listing `files`, and the shards in `present` (each holding step)."""
    import json

    import torch

    folder = root / f"step_{step:08d}"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"step": step, "world_size": len(files), "files": files}))
    for name in present:
        torch.save({"step": torch.tensor(step)}, folder / name)


@pytest.mark.points(1, exercise="10.5")
def test_sharded_load_trusts_latest_and_checks_this_ranks_file(exercise, tmp_path):
    """'latest' decides while its folder is complete for this rank, even when a newer folder exists (an
    operator rolled back); a manifest that lists this rank's shard whose file is gone sends the rank back to
    the newest folder that has it."""
    both = ["rank_00000.pt", "rank_00001.pt"]
    _checkpoint(tmp_path, 3, both, both)
    _checkpoint(tmp_path, 5, both, both)
    (tmp_path / "latest").write_text("step_00000003")
    for rank in (0, 1):
        step, state = exercise.sharded_load(str(tmp_path), rank)
        assert (step, int(state["step"])) == (3, 3), f"rank {rank}: 'latest' names step 3"
    _checkpoint(tmp_path, 8, both, ["rank_00000.pt"])                  # rank 1's shard of step 8 was lost
    (tmp_path / "latest").write_text("step_00000008")
    assert exercise.sharded_load(str(tmp_path), 0)[0] == 8
    step, state = exercise.sharded_load(str(tmp_path), 1)
    assert (step, int(state["step"])) == (5, 5), "rank 1's file of step 8 is missing: the newest with it is 5"
