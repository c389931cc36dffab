"""Model compression in the simulator: low-bit weights change the weights' memory and all-gather bytes (not
gradients, optimizer state or FLOPs); structured sparsity simulates the narrower model; bad fields are
one-line errors; a student can ask what a 4-bit llama2-70b needs."""

import pytest

from simulator.config import ConfigError, load_config
from simulator.model_compression import pruned_ffn_dim, weight_bytes_per_param, weights_bytes
from simulator.simulate import format_summary, simulate
from simulator.workload import count_params, model_flops_per_token


def _cfg(model="llama-7b", zero=0, **model_fields):
    return {"model": {"preset": model, **model_fields}, "seq_len": 2048,
            "cluster": {"gpu": "a100-80gb", "num_gpus": 16},
            "parallel": {"tp": 2, "pp": 1, "zero_stage": zero, "micro_batch_size": 1, "global_batch_size": 64},
            "training": {"precision": "bf16"}}


@pytest.mark.parametrize("bits,per_param", [(16, 2.0), (8, 1 + 2 / 4096), (4, 0.5 + 2 / 64)])
def test_weight_bits_scale_the_weights_only(bits, per_param):
    base, low = simulate(_cfg()), simulate(_cfg(weight_bits=bits))
    mb, ml = base["memory_per_gpu_bytes"], low["memory_per_gpu_bytes"]
    assert ml["params"] == pytest.approx(mb["params"] * per_param / 2)
    for key in ("grads", "optimizer", "activations"):
        assert ml[key] == pytest.approx(mb[key])
    assert low["model_flops_per_step"] == base["model_flops_per_step"]
    info = low["compression"]
    assert info["weight_bytes_per_param"] == pytest.approx(per_param)
    assert info["weights_bytes"] == pytest.approx(count_params(load_config(_cfg()).model, 2048) * per_param)
    assert base["compression"] is None


def test_low_bit_weights_shrink_zero3_gathers():
    dp_only = {"parallel": {"tp": 1, "zero_stage": 3, "micro_batch_size": 1, "global_batch_size": 64}}
    base = simulate({**_cfg(), **dp_only})
    low = simulate({**_cfg(weight_bits=4), **dp_only})
    assert low["memory_per_gpu_bytes"]["params"] < 0.3 * base["memory_per_gpu_bytes"]["params"]
    assert low["breakdown_s"]["exposed_comm"] <= base["breakdown_s"]["exposed_comm"] + 1e-12
    assert low["step_time_s"] <= base["step_time_s"] + 1e-12


def test_fp32_training_keeps_a_master_copy_beside_low_bit_weights():
    cfg = _cfg(weight_bits=8)
    cfg["training"]["precision"] = "fp32"
    base_cfg = _cfg()
    base_cfg["training"]["precision"] = "fp32"
    base, low = simulate(base_cfg)["memory_per_gpu_bytes"], simulate(cfg)["memory_per_gpu_bytes"]
    assert low["optimizer"] == pytest.approx(base["optimizer"] + base["params"])
    assert low["params"] == pytest.approx(base["params"] * (1 + 2 / 4096) / 4)


def test_structured_sparsity_simulates_the_narrower_model():
    base, pruned = simulate(_cfg()), simulate(_cfg(structured_sparsity=0.5))
    cfg = load_config(_cfg(structured_sparsity=0.5))
    assert pruned_ffn_dim(cfg) == 5504
    narrow = load_config(_cfg(ffn_dim=5504)).model
    assert pruned["model_flops_per_step"] == pytest.approx(64 * 2048 * model_flops_per_token(narrow, 2048))
    # a LLaMA block's MLP is 2/3 of its weights: half the channels remove about a third of the FLOPs
    assert 0.6 < pruned["model_flops_per_step"] / base["model_flops_per_step"] < 0.75
    assert pruned["step_time_s"] < base["step_time_s"]
    for key in ("params", "grads", "optimizer", "activations"):
        assert pruned["memory_per_gpu_bytes"][key] < base["memory_per_gpu_bytes"][key]
    assert pruned["compression"]["ffn_dim"] == 5504


def test_what_a_4bit_llama2_70b_needs():
    """ZeRO-2 without model parallelism: bf16 weights (138 GB) do not fit an 80 GB GPU, 4-bit ones do."""
    cfg = {"model": {"preset": "llama2-70b"}, "seq_len": 4096, "cluster": {"gpu": "a100-80gb", "num_gpus": 64},
           "parallel": {"zero_stage": 2, "global_batch_size": 64, "activation_checkpointing": "full"}}
    bf16 = simulate(load_config(cfg))
    int4 = simulate(load_config(cfg, ["model.weight_bits=4"]))
    assert not bf16["fits_in_memory"] and bf16["step_time_s"] is None
    assert int4["fits_in_memory"] and int4["step_time_s"] > 0
    assert int4["compression"]["weights_bytes"] == pytest.approx(36.6e9, rel=0.01)
    assert weights_bytes(load_config(cfg).model, 4) == pytest.approx(int4["compression"]["weights_bytes"], rel=1e-3)
    assert "weights: 4-bit" in format_summary(int4) and "36.6 GB" in format_summary(int4)


@pytest.mark.parametrize("override,message", [
    ("model.weight_bits=3", "model.weight_bits: '3' is not one of 16, 8, 4"),
    ("model.weight_group_size=48", "model.weight_group_size: 48 must be even and divide model.dim 4096"),
    ("model.structured_sparsity=1.0", "model.structured_sparsity: 1.0 must be in [0, 1)"),
])
def test_bad_fields_are_one_line_errors(override, message, capsys):
    from llama_course.commands.cli import main

    overrides = [override] + (["model.weight_bits=4"] if "group" in override else [])
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(_cfg(), overrides)
    argv = ["simulate", "configs/llama-7b-a100.yaml"] + [x for o in overrides for x in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_weight_bytes_default_to_the_precision():
    assert weight_bytes_per_param(load_config(_cfg())) == 2.0
    cfg = _cfg()
    cfg["training"]["precision"] = "fp32"
    assert weight_bytes_per_param(load_config(cfg)) == 4.0
