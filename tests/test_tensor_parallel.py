"""Tensor parallel (course Megatron layers and DTensor) against the single-process run: same losses,
same gradients parameter by parameter once shards are mapped back, in one 2-rank spawn."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from llama_course.parallel.tensor_parallel import shard_dim  # noqa: E402
from simulator.config import ConfigError  # noqa: E402

CASES = [
    {"parallel.tp": 2},
    {"parallel.tp": 2, "parallel.sequence_parallel": True, "parallel.activation_checkpointing": "full"},
    {"parallel.tp": 2, "model.arch": "gpt", "parallel.sequence_parallel": True},
    {"parallel.tp": 2, "parallel.implementation": "torch", "parallel.activation_checkpointing": "selective"},
    {"parallel.tp": 2, "parallel.implementation": "torch", "parallel.sequence_parallel": True},
]


def assert_matches_single_process(result, rtol=1e-5):
    ref = result["reference"]
    for step, (got, want) in enumerate(zip(result["losses"], ref["losses"])):
        assert abs(got - want) <= rtol * abs(want), f"step {step + 1}: loss {got} != single-process {want}"
    assert len({tuple(r) for r in result["rank_losses"]}) == 1, "ranks logged different losses"
    assert result["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    assert set(result["grads"]) == set(ref["grads"])
    for name, want in ref["grads"].items():
        torch.testing.assert_close(result["grads"][name], want, rtol=1e-4, atol=1e-6, msg=name)
    assert result["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)          # evaluate()
    assert set(result["weights"]) == set(ref["weights"])                              # full_model_state()
    for name, want in ref["weights"].items():
        torch.testing.assert_close(result["weights"][name], want, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def results():
    return spawn(workers.layouts, 2, CASES, timeout=240)[0]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c) for c in CASES])
def test_layout_matches_single_process(results, index):
    expected = "tensor_parallel" if CASES[index].get("parallel.implementation", "course") == "course" \
        else "torch_tensor_parallel"
    assert results[index]["engine"] == expected
    assert_matches_single_process(results[index])


def test_shard_dims_follow_megatron():
    assert shard_dim("layers.3.attention.wq.weight") == 0           # column: output features
    assert shard_dim("layers.3.feed_forward.w3.weight") == 0
    assert shard_dim("layers.3.attention.wo.weight") == 1           # row: input features
    assert shard_dim("layers.3.feed_forward.w2.weight") == 1
    assert shard_dim("layers.3.feed_forward.w2.bias") is None       # added after the all-reduce
    assert shard_dim("layers.3.attention.wq.bias") == 0
    assert shard_dim("tok_embeddings.weight") == 0 and shard_dim("output.weight") == 0   # vocabulary
    assert shard_dim("layers.0.attention_norm.weight") is None and shard_dim("norm.weight") is None


@pytest.mark.parametrize("overrides, field", [
    ({"parallel.tp": 3, "cluster.num_gpus": 3}, "parallel.tp: 3 does not divide model.n_heads"),
    ({"parallel.tp": 4, "cluster.num_gpus": 4}, "parallel.tp: 4 does not divide model.n_kv_heads"),
    ({"parallel.tp": 2, "parallel.sequence_parallel": True, "seq_len": 15}, "does not divide seq_len"),
])
def test_bad_layouts_are_refused_in_one_line(overrides, field):
    with pytest.raises(ConfigError) as e:
        workers.make_config(overrides)
    assert field in str(e.value) and "\n" not in str(e.value)
