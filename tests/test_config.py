"""Config loading and validation: every bad input is one line naming the field, exit code 2."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config import ConfigError, field_docs, load_config
from simulator.presets import MODEL_PRESETS


def test_defaults_run_and_derive_degrees():
    cfg = load_config(None)
    assert cfg.parallel.dp == 1 and cfg.cluster.num_gpus == 1 and cfg.world_size == 1
    cfg = load_config({"cluster": {"num_gpus": 8}, "parallel": {"tp": 2, "pp": 2, "global_batch_size": 8}})
    assert cfg.parallel.dp == 2 and cfg.grad_accum_steps == 4


def test_overrides_are_read_as_yaml():
    cfg = load_config("configs/tiny.yaml", ["parallel.tp=2", "faults.kill=[{rank: 1, step: 5}]",
                                            "training.total_tokens=1.4e12", "checkpoint.async=true"])
    assert cfg.parallel.tp == 2 and cfg.parallel.dp == 1
    assert cfg.faults.kill == [{"rank": 1, "step": 5}]
    assert cfg.training.total_tokens == 1.4e12 and cfg.checkpoint.async_save is True
    assert cfg.to_dict()["checkpoint"]["async"] is True


def test_preset_fields_can_be_overridden():
    cfg = load_config({"model": {"preset": "llama2-70b", "n_layers": 2}})
    assert cfg.model.dim == 8192 and cfg.model.n_kv_heads == 8 and cfg.model.n_layers == 2


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_every_preset_is_valid(name):
    load_config({"model": {"preset": name}})


def test_tiny_runs_every_cpu_layout():
    for layout in (["parallel.tp=2"], ["parallel.pp=2", "parallel.vpp=2", "parallel.schedule=interleaved_1f1b"],
                   ["parallel.dp=4"], ["parallel.dp=2", "parallel.tp=2", "parallel.pp=2"]):
        load_config("configs/tiny.yaml", layout + ["cluster.num_gpus=null"])


BAD = [
    (["parallel.tpp=2"], "unknown key 'parallel.tpp' (did you mean 'parallel.tp'?)"),
    (["modle.dim=4"], "unknown key 'modle'"),
    (["model.dim=abc"], "model.dim: expected an integer"),
    (["model.dim=2.5"], "model.dim: expected an integer"),
    (["parallel.overlap=3"], "parallel.overlap: expected true or false"),
    (["model.n_layers=-1"], "model.n_layers: must be positive"),
    (["parallel.micro_batch_size=0"], "parallel.micro_batch_size: must be positive"),
    (["cluster.num_gpus=3", "parallel.dp=2"], "cluster.num_gpus: 3 != dp x tp x pp"),
    (["parallel.tp=3", "cluster.num_gpus=null"], "parallel.tp: 3 does not divide model.n_heads"),
    (["parallel.tp=4", "cluster.num_gpus=null"], "parallel.tp: 4 does not divide model.n_kv_heads"),
    (["parallel.global_batch_size=10"], "parallel.global_batch_size: 10 is not divisible"),
    (["model.preset=llama-8b"], "model.preset: unknown preset 'llama-8b' (did you mean 'llama3-8b'?)"),
    (["parallel.schedule=zb"], "parallel.schedule: 'zb' is not one of"),
    (["cluster.gpu=v100"], "cluster.gpu: 'v100' is not one of"),
    (["parallel.pp=8", "cluster.num_gpus=null"], "parallel.pp: 8 x vpp 1 stages is more than model.n_layers 4"),
    (["parallel.pp=2", "parallel.vpp=4", "parallel.schedule=interleaved_1f1b", "cluster.num_gpus=null"],
     "parallel.pp: 2 x vpp 4 stages is more than"),
    (["model.n_layers=6", "parallel.pp=2", "parallel.vpp=2", "parallel.schedule=interleaved_1f1b",
      "cluster.num_gpus=null"], "parallel.vpp: 2 does not divide the 3 layers per stage"),
    (["faults.kill=[{rank: 5, step: 1}]"], "faults.kill[0].rank: 5 is not below world size 2"),
    (["training.lr=0"], "training.lr: must be positive"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["model.n_kv_heads=3"], "model.n_kv_heads: 3 does not divide model.n_heads 4"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_input_names_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parallel:\n  tp: 3\n")
    for argv in (["train", str(bad)], ["train", "configs/tiny.yaml", "--set", "parallel.tpp=2"],
                 ["train", str(tmp_path / "missing.yaml")], ["train", "configs/tiny.yaml", "--set", "oops"]):
        proc = subprocess.run([sys.executable, "-m", "llama_course", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr


def test_not_a_mapping_and_bad_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("model: [\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(128, 256)))     # not UTF-8: was a traceback
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(tmp_path / "binary.yaml")


def test_every_field_has_a_docstring():
    import dataclasses

    from simulator import config as c

    docs = field_docs()
    for cls, prefix in ((c.ModelConfig, "model."), (c.ParallelConfig, "parallel."), (c.TrainingConfig, "training."),
                        (c.ClusterConfig, "cluster."), (c.FaultsConfig, "faults."), (c.CheckpointConfig, "checkpoint."),
                        (c.DataConfig, "data."), (c.LoadBalanceConfig, "load_balance.")):
        for f in dataclasses.fields(cls):
            name = prefix + ("async" if f.name == "async_save" else f.name)
            assert docs.get(name), f"{name} has no docstring"


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["parallel.dp", "parallel.tp", "parallel.pp", "parallel.vpp",
                                        "parallel.micro_batch_size", "parallel.global_batch_size", "model.n_heads",
                                        "model.n_kv_heads", "model.dim", "cluster.num_gpus", "seq_len"]),
                       st.one_of(st.integers(-2, 16), st.none(), st.text(max_size=3), st.floats(-1, 10))))
def test_random_overrides_either_load_or_raise_config_error(values):
    overrides = [f"{k}={'null' if v is None else v!r}" for k, v in values.items()]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    p = cfg.parallel
    assert p.dp * p.tp * p.pp == cfg.cluster.num_gpus
    assert p.global_batch_size % (p.dp * p.micro_batch_size) == 0
