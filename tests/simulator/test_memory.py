import pytest

from simulator.config import load_config
from simulator.memory import layers_per_virtual_stage, layout_memory, rank_memory, virtual_stage_params
from simulator.workload import count_params


def test_stage_params_add_up_to_the_model():
    cfg = load_config({"model": {"preset": "llama-7b"}, "parallel": {"pp": 4, "dp": 1}})
    layers = layers_per_virtual_stage(32, 4)
    assert sum(virtual_stage_params(cfg, layers)) == pytest.approx(count_params(cfg.model), rel=1e-9)
    assert layers_per_virtual_stage(10, 4) == [3, 3, 2, 2]


def test_first_stage_of_1f1b_holds_p_micro_batches():
    # Megatron-LM's GPT (tied embeddings across pipeline stages, which the course runtime does not run)
    cfg = load_config({"model": {"preset": "gpt-18.4b"}, "seq_len": 2048,
                       "parallel": {"pp": 4, "dp": 1, "global_batch_size": 32}}, runtime=False)
    layers = layers_per_virtual_stage(cfg.model.n_layers, 4)
    first, last = rank_memory(cfg, 0, layers, 32), rank_memory(cfg, 3, layers, 32)
    assert first["activations"] > 3 * (last["activations"] - 1e9)
    gpipe = load_config({"model": {"preset": "gpt-18.4b"}, "seq_len": 2048,
                         "parallel": {"pp": 4, "dp": 1, "global_batch_size": 32, "schedule": "gpipe"}},
                        runtime=False)
    assert rank_memory(gpipe, 0, layers, 32)["activations"] > 7 * first["activations"]
    mem, rank = layout_memory(cfg, layers, 32)
    assert rank == 0 and mem["total"] == first["total"]
