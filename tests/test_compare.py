"""`compare` and `bench`: both engines on one config, the error computed from what each reports."""

import json
import subprocess
import sys

import pytest

from llama_course.compare import _merge, _minus, measured_components


def test_interval_arithmetic():
    assert _merge([(0, 2), (1, 3), (5, 6)]) == [[0, 3], [5, 6]]
    assert _minus([[0, 10]], [[2, 3], [5, 7]]) == 7
    assert _minus([[0, 10]], []) == 10 and _minus([[2, 3]], [[0, 10]]) == 0


def test_measured_components_from_a_trace(tmp_path):
    ev = [{"ph": "X", "pid": r, "tid": t, "name": n, "ts": ts, "dur": d}
          for r in (0, 1) for t, n, ts, d in (("compute", "forward", 0, 100), ("compute", "backward", 100, 200),
                                             ("comm", "all_reduce", 250, 100), ("compute", "optimizer", 350, 50))]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": ev}))
    got = measured_components(str(path), steps=1)
    assert got["compute"] == pytest.approx(300e-6) and got["exposed_comm"] == pytest.approx(50e-6)
    assert got["optimizer"] == pytest.approx(50e-6) and got["bubble"] == 0


def test_compare_json_contract(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llama_course", "compare", "configs/tiny.yaml", "--json",
                           "--set", "cluster.num_gpus=1", "--set", "training.steps=6", "--set", "seq_len=64",
                           "--set", "parallel.global_batch_size=8", "--trace-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for part in ("predicted", "measured", "relative_error"):
        assert out[part]["step_time_s"] is not None
    m, p = out["measured"]["step_time_s"], out["predicted"]["step_time_s"]
    assert out["relative_error"]["step_time_s"] == pytest.approx((p - m) / m)
    for name in ("predicted.json", "measured.json"):
        trace = json.loads((tmp_path / name).read_text())
        assert any(e.get("ph") == "X" and e.get("tid") == "compute" for e in trace["traceEvents"])
