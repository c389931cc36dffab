"""`llama-course bench`: --out is checked before minutes of measuring, and a measurement is never lost."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import workers_bench  # noqa: E402

from llama_course.commands import bench  # noqa: E402
from llama_course.core.testing import spawn  # noqa: E402
from simulator.config import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("content, message", [("", "is empty"), ("{not json", "not a JSON profile"),
                                              ("[1, 2]", "a JSON list, not an object")])
def test_an_out_file_that_is_not_a_profile_is_refused_before_measuring(tmp_path, monkeypatch, content, message):
    out = tmp_path / "cpu.json"
    out.write_text(content)
    monkeypatch.setattr(bench, "measure", lambda **kw: pytest.fail("measured before checking --out"))
    with pytest.raises(ConfigError) as e:
        bench.cli(SimpleNamespace(out=str(out), quick=True, json=False, repeat=1))
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="is a folder"):
        bench.check_profile_path(str(tmp_path))


FAKE = {"raw": {"x": 1}, "profile": {"name": "cpu", "matmul_efficiency": 0.5}}


def test_the_profile_extends_an_existing_one_through_a_rename(tmp_path, monkeypatch):
    out = tmp_path / "cpu.json"
    out.write_text(json.dumps({"name": "cpu", "kept": 7}))
    monkeypatch.setattr(bench, "measure", lambda **kw: json.loads(json.dumps(FAKE)))
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    assert bench.cli(SimpleNamespace(out=str(out), quick=True, json=True, repeat=1)) == 0
    prof = json.loads(out.read_text())
    assert prof["kept"] == 7 and prof["matmul_efficiency"] == 0.5
    assert len(replaced) == 1 and replaced[0][1] == str(out) and not os.path.exists(replaced[0][0])
    assert [p.name for p in tmp_path.iterdir()] == ["cpu.json"]          # no temporary file left behind


def test_a_profile_that_cannot_be_written_keeps_the_measurement(tmp_path, monkeypatch):
    out = tmp_path / "cpu.json"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "measure", lambda **kw: json.loads(json.dumps(FAKE)))

    def broken(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(bench, "write_profile", broken)
    with pytest.raises(ConfigError) as e:
        bench.cli(SimpleNamespace(out=str(out), quick=True, json=False, repeat=1))
    saved = str(e.value).rsplit(" ", 1)[-1]
    assert "disk full" in str(e.value) and json.loads(Path(saved).read_text())["raw"] == {"x": 1}


def test_bench_cli_exits_2_in_one_line_on_an_empty_out_file(tmp_path):
    out = tmp_path / "empty.json"
    out.write_text("")
    proc = subprocess.run([sys.executable, "-m", "llama_course", "bench", "--out", str(out)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "is empty" in proc.stderr
    assert out.read_text() == ""


def test_a_curve_point_is_sampled_over_its_wall_time_floor_with_the_same_calls_on_every_rank():
    """A point of bench's all-reduce curves is a mean over at least `min_s` seconds of bursts (a short sample
    mostly misses the scheduler waits training pays for), and every rank issues the same number of calls."""
    floor = spawn(workers_bench.burst_calls, 2, 0.0, timeout=60)
    timed = spawn(workers_bench.burst_calls, 2, 0.3, timeout=60)
    # a warm-up call, then 2 bursts of 4 without a floor; with one, the slower rank's first burst (4 calls of
    # 6 ms on its clock) sets ceil(0.3 / 0.024) = 13 bursts on both ranks (rank 0 alone would ask for 15)
    assert [r["calls"] for r in floor] == [9, 9]
    assert [r["calls"] for r in timed] == [1 + 13 * 4] * 2
    assert [r["per_call"] for r in timed] == pytest.approx([0.005, 0.006])
