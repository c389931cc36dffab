"""Context parallelism (`parallel.cp`, llama_course/parallel/context_parallel.py) against the single-process
run and against PyTorch's own context parallelism.

- the load-balanced split: each rank's two chunks round-trip, in the order of torch's head-tail balancer
  (torch.distributed.tensor.experimental._context_parallel._load_balancer._HeadTailLoadBalancer);
- every capability-table row with cp > 1, on gloo ranks in strict mode (NCCL's rules, tests/conftest.py):
  cp 2 alone (course data parallelism, ZeRO-3, activation checkpointing, GPT's learned positions, torch
  DDP and FSDP2) on 2 ranks; dp 2 x cp 2, tp 2 x cp 2 with sequence parallelism (ZeRO-1), pp 2 x cp 2
  (ZeRO-0 and ZeRO-2) on 4. Two SGD steps in fp32 give the single-process losses and held-out loss
  (relative 1e-5; measured: 1e-7), step-1 gradients and final weights (rtol 1e-5, atol 1e-7; measured:
  |difference| <= 4e-8), and step 1 hands torch.distributed exactly one all-gather of the local K and V
  (two under activation checkpointing: the recomputed forward gathers again) and one reduce-scatter of
  the whole sequence's dK, dV per block and micro-batch (the wire recorder, core/wire.py);
- the oracle: torch's ring attention (`_templated_ring_attention` and its backward, with the CPU flash
  kernel aten._scaled_dot_product_flash_attention_for_cpu, all-gather rotation, head-tail load
  balancing) runs on 2 gloo ranks on the CPU; the course's attention output and its q, k, v gradients
  equal torch's on the same inputs (rtol 1e-5, atol 1e-7), and both equal the whole sequence's causal
  attention, sharded.
"""

import os
import sys

import pytest
import torch
from torch.distributed.tensor.experimental._context_parallel._load_balancer import _HeadTailLoadBalancer

sys.path.insert(0, os.path.dirname(__file__))

import workers_context_parallel as workers  # noqa: E402
import workers_model_parallel as mp  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402
from llama_course.parallel.context_parallel_comm import (  # noqa: E402
    local_positions,
    shard_sequence,
    unshard_sequence,
)
from simulator import spec  # noqa: E402
from simulator.config import ConfigError  # noqa: E402

CP = {"parallel.cp": 2}
TWO = [                                                    # 2 ranks: cp 2 (dp 1)
    CP,
    {**CP, "model.arch": "gpt"},                           # learned positions, biases, LayerNorm
    {**CP, "parallel.activation_checkpointing": "full"},   # the gather runs again in the recomputed forward
    {**CP, "parallel.activation_checkpointing": "selective_op"},
    {**CP, "parallel.zero_stage": 3},
    {**CP, "parallel.implementation": "torch"},            # DDP over the 2 replicas
    {**CP, "parallel.implementation": "torch", "parallel.zero_stage": 2},   # FSDP2
    {**CP, "parallel.implementation": "torch", "parallel.zero_stage": 3},
]
FOUR = [                                                   # 4 ranks
    {**CP, "parallel.dp": 2},
    {**CP, "parallel.tp": 2, "parallel.sequence_parallel": True},
    {**CP, "parallel.tp": 2, "parallel.sequence_parallel": True, "model.arch": "gpt",
     "parallel.activation_checkpointing": "selective", "parallel.zero_stage": 1},
    {**CP, "parallel.pp": 2, "parallel.schedule": "1f1b"},
    {**CP, "parallel.pp": 2, "parallel.schedule": "gpipe", "parallel.zero_stage": 2},
]
ENGINES = {"torch": {0: "ddp", 2: "fsdp2", 3: "fsdp2"}}
RTOL, ATOL = 1e-5, 1e-7
RING_ULPS = 1e-6
"""Against torch's ring attention: elementwise within RTOL plus RING_ULPS x the tensor's largest magnitude (a few
fp32 ulps of it). The two sum in different orders (one softmax over the gathered keys; the ring's online merge of
per-chunk softmaxes), and which elements land an ulp apart depends on the CPU's kernels: on an AMD EPYC host
dv differed by 1.2e-6 at a scale of 3.6 (3 ulps), past an absolute 1e-7 for its near-zero elements."""


def engine_of(case: dict) -> str:
    if case.get("parallel.implementation") == "torch":
        return ENGINES["torch"][case.get("parallel.zero_stage", 0)]
    return "parallel_3d" if case.get("parallel.tp", 1) > 1 or case.get("parallel.pp", 1) > 1 else "data_parallel"


# ---------------------------------------------------------------------------------------------
# the split
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_chunks_round_trip_in_torchs_head_tail_order(cp):
    seq = 2 * cp * 3
    x = torch.arange(2 * seq).view(2, seq) * 10
    parts = [shard_sequence(x, cp, r, dim=1) for r in range(cp)]
    assert torch.equal(unshard_sequence(parts, dim=1), x)
    if cp == 1:
        return
    order = _HeadTailLoadBalancer(seq, cp, "cpu")._generate_indices()[0].long()     # rank r: [r (2s/c), ...)
    restore = _HeadTailLoadBalancer(seq, cp, "cpu")._generate_indices(restore=True)[0].long()
    per_rank = seq // cp
    for r in range(cp):
        mine = order[r * per_rank:(r + 1) * per_rank]
        assert torch.equal(local_positions(seq, cp, r), mine)
        assert torch.equal(parts[r], x[:, mine])
        assert [(a, b) for a, b in spec.cp_chunks(seq, cp, r)] == [(int(mine[0]), int(mine[per_rank // 2 - 1]) + 1),
                                                                  (int(mine[per_rank // 2]), int(mine[-1]) + 1)]
    assert torch.equal(torch.cat(parts, dim=1)[:, restore], x)


def test_a_sequence_that_two_cp_does_not_divide_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        mp.make_config({**CP, "seq_len": 18})
    assert "parallel.cp" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# layouts against the single-process run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two():
    return spawn(workers.layouts, 2, TWO, timeout=300)[0]


@pytest.fixture(scope="module")
def four():
    return spawn(workers.layouts, 4, FOUR, timeout=400)[0]


def assert_matches_single_process(result: dict, case: dict) -> None:
    """Losses, the step-1 gradient norm and gradients (not under the course's ZeRO-2/3, whose reduced
    gradients live in the sync's shards: the norm and the weights after them are compared), held-out loss,
    the weights after the last step."""
    ref = result["reference"]
    assert result["losses"] == pytest.approx(ref["losses"], rel=RTOL)
    assert len({tuple(r) for r in result["rank_losses"]}) == 1, "ranks logged different losses"
    assert result["grad_norm"] == pytest.approx(ref["grad_norm"], rel=RTOL)
    assert result["val_loss"] == pytest.approx(ref["val_loss"], rel=RTOL)
    sharded = case.get("parallel.zero_stage", 0) >= 2 and case.get("parallel.implementation") != "torch"
    for key in ("weights",) if sharded else ("grads", "weights"):
        assert set(result[key]) == set(ref[key])
        for name, want in ref[key].items():
            torch.testing.assert_close(result[key][name], want, rtol=RTOL, atol=ATOL, msg=f"{key} {name}")


def assert_kv_crossed_the_wire(result: dict, case: dict) -> None:
    """Step 1: per block and micro-batch one all-gather of this rank's K and V (b s/c 2 kv_dim fp32) and one
    reduce-scatter of the whole sequence's (b s 2 kv_dim); activation checkpointing (full, selective,
    selective_op) recomputes the gather in backward."""
    cfg = mp.make_config(case)
    m, p = cfg.model, cfg.parallel
    kv = p.micro_batch_size * cfg.seq_len * 2 * m.n_kv_heads * (m.dim // m.n_heads) * 4
    blocks = m.n_layers // p.pp * result["n_micro"]
    gathers = 1 if p.activation_checkpointing == "none" else 2
    cp_calls = [c for c in result["calls"] if c[2] == p.cp]
    assert sorted(cp_calls) == sorted([("all_gather", kv // p.cp, p.cp)] * blocks * gathers
                                      + [("reduce_scatter", kv, p.cp)] * blocks)


@pytest.mark.parametrize("index", range(len(TWO)), ids=[str(c) for c in TWO])
def test_two_ranks_match_single_process(two, index):
    assert two[index]["engine"] == engine_of(TWO[index])
    assert_matches_single_process(two[index], TWO[index])
    if "parallel.implementation" not in TWO[index]:          # FSDP2 gathers on the same 2 ranks: not told apart
        assert_kv_crossed_the_wire(two[index], TWO[index])


@pytest.mark.parametrize("index", range(len(FOUR)), ids=[str(c) for c in FOUR])
def test_four_ranks_match_single_process(four, index):
    assert four[index]["engine"] == engine_of(FOUR[index])
    assert_matches_single_process(four[index], FOUR[index])
    if FOUR[index].get("parallel.tp", 1) == 1:                # sequence parallelism gathers over tp 2 as well
        assert_kv_crossed_the_wire(four[index], FOUR[index])


# ---------------------------------------------------------------------------------------------
# the oracle: torch's ring attention
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def against_torch():
    return spawn(workers.attention_against_torch, 2, 16, timeout=120)


def test_attention_and_its_gradients_equal_torchs_ring_attention(against_torch):
    for rank, result in enumerate(against_torch):
        for name, ours, theirs in zip(("output", "dq", "dk", "dv"), result["ours"], result["torch"]):
            torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=RING_ULPS * float(theirs.abs().max()),
                                       msg=f"rank {rank} {name}")


def test_attention_equals_the_whole_sequence_causal_attention(against_torch):
    q, k, v, dout = (t.clone().requires_grad_() for t in against_torch[0]["full"])
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(dout.detach())
    for rank, result in enumerate(against_torch):
        for name, ours, whole in zip(("output", "dq", "dk", "dv"), result["ours"], (out, q.grad, k.grad, v.grad)):
            torch.testing.assert_close(ours, shard_sequence(whole.detach(), 2, rank, dim=2), rtol=RTOL, atol=ATOL,
                                       msg=f"rank {rank} {name}")


def test_attention_gathers_k_and_v_once_and_reduce_scatters_once(against_torch):
    b, h, s, hd = against_torch[0]["full"][0].shape
    kv = b * 2 * h * s * hd * 4
    for result in against_torch:
        assert result["calls"] == [("all_gather", kv // 2, 2), ("reduce_scatter", kv, 2)]
