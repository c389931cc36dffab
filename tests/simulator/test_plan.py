import argparse
import json

from simulator.config import load_config
from simulator.plan import cli, plan


def _cfg():
    return load_config({"model": {"preset": "llama-1b"}, "seq_len": 2048,
                        "cluster": {"gpu": "a100-40gb", "num_gpus": 16}, "parallel": {"global_batch_size": 64}})


def test_plan_ranks_fitting_layouts_best_first():
    entries = plan(_cfg(), top=5)
    assert 1 <= len(entries) <= 5
    times = [e["step_time_s"] for e in entries]
    assert times == sorted(times)
    for e in entries:
        p = e["parallel"]
        assert p["dp"] * p["tp"] * p["pp"] == 16 and e["fits_in_memory"]


def test_plan_cli_json(capsys):
    args = argparse.Namespace(config=None, overrides=["model.preset=llama-1b", "seq_len=2048", "cluster.gpu=a100-40gb",
                                                      "cluster.num_gpus=16", "parallel.global_batch_size=64"],
                              top=2, json=True)
    assert cli(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and "parallel" in out[0] and "step_time_s" in out[0]
