"""Mixture of experts (core/moe.py) and expert parallelism (`parallel.ep`, parallel/expert_parallel.py).

- one process: the MoE MLP equals a naive loop over every token and its k experts (the weights the softmax
  of the k chosen logits); it is dropless (each expert gets exactly the tokens that chose it, and one that
  got none still has a zero gradient); the load-balancing loss equals E sum_e f_e P_e worked out by hand;
  the engine's training loss is cross-entropy + router_aux_loss x the blocks' mean aux loss, its held-out
  loss the cross-entropy alone (spec.parameters against named_parameters: tests/test_spec.py);
- gloo ranks in strict mode (NCCL's rules, tests/conftest.py): dp 2 with MoE (ep 1, the course's data
  parallelism and torch DDP), dp 2 x ep 2 (LLaMA; GPT under full activation checkpointing, whose
  recomputed forward exchanges the tokens again), and dp 4 x ep 2 on 4 ranks. Two SGD steps in fp32 give the
  single-process losses, held-out loss and grad norm (relative 1e-5), step-1 gradients (the experts' gathered
  from their owners) and final weights (rtol 1e-5, atol 1e-7);
- the wire: with ep 2, per MoE block and micro-batch, step 1 hands torch.distributed one all-to-all of E
  int64 counts, and four of rows (dispatch and combine forward, their reverses backward); summed over the
  ranks, the rows sent are 4 T k dim fp32 per block and micro-batch (every assignment leaves and comes back,
  forward and backward);
- against PyTorch: core torch has no mixture-of-experts layer to compare with (torchtitan's lives outside
  it), so the oracle is for the communication: the course's autograd all-to-all equals torch's
  torch.distributed.nn.functional.all_to_all_single, forward and backward, on uneven splits with zeros.
"""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import workers_expert_parallel as workers  # noqa: E402
import workers_model_parallel as mp  # noqa: E402

from llama_course.core.distributed import Context  # noqa: E402
from llama_course.core.model import Transformer, build_model  # noqa: E402
from llama_course.core.moe import MoEFeedForward, load_balancing_loss, route  # noqa: E402
from llama_course.core.testing import spawn  # noqa: E402
from llama_course.engine import Engine, cross_entropy  # noqa: E402
from simulator.config import ConfigError  # noqa: E402

RTOL, ATOL = 1e-5, 1e-7
EP = {"parallel.ep": 2}
TWO = [{"parallel.dp": 2}, {"parallel.dp": 2, "parallel.implementation": "torch"}, {"parallel.dp": 2, **EP},
       {"parallel.dp": 2, **EP, "parallel.activation_checkpointing": "full", "model.arch": "gpt"}]
FOUR = [{"parallel.dp": 4, **EP}]


def moe_config(**kw):
    return mp.make_config({**workers.MOE, **kw})


# ---------------------------------------------------------------------------------------------
# one process
# ---------------------------------------------------------------------------------------------

def naive(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax over its k largest router logits, the weighted sum of those experts."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = moe.gate(x[t])
        top = sorted(range(moe.n_experts), key=lambda e: -float(logits[e]))[:moe.top_k]
        w = torch.softmax(torch.stack([logits[e] for e in top]), 0)
        out[t] = sum(w[j] * moe.experts[e](x[t:t + 1])[0] for j, e in enumerate(top))
    return out


@pytest.mark.parametrize("arch, k", [("llama", 2), ("gpt", 1), ("llama", 3)])
def test_moe_equals_the_naive_loop_over_tokens_and_their_experts(arch, k):
    cfg = moe_config(**{"model.arch": arch, "model.experts_per_token": k})
    moe = Transformer(cfg.model, 16).layers[0].feed_forward
    x = torch.randn(2, 5, cfg.model.dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(moe(x), naive(moe, x.view(-1, x.shape[-1])).view_as(x), rtol=1e-5, atol=1e-6)


def test_dropless_every_token_reaches_its_k_experts_and_an_idle_expert_has_a_zero_gradient():
    cfg = moe_config()
    moe = Transformer(cfg.model, 16).layers[0].feed_forward
    x = torch.randn(7, cfg.model.dim, generator=torch.Generator().manual_seed(5)).abs() + 0.1
    with torch.no_grad():                    # make expert 3 idle: no token ranks it in its top 2
        moe.gate.weight[3] = -1.0
    seen = {}
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, args, out, e=e: seen.__setitem__(e, args[0].detach().clone()))
    out = moe(x)
    index, _ = route(moe.gate(x), 2)
    for e in range(4):
        want = x[(index == e).any(-1)]
        torch.testing.assert_close(seen[e], want)                # exactly the tokens that chose it, in order
    assert seen[3].shape[0] == 0 and sum(s.shape[0] for s in seen.values()) == 7 * 2
    out.sum().backward()
    assert all(q.grad is not None for q in moe.parameters())
    assert all(float(q.grad.abs().sum()) == 0 for q in moe.experts[3].parameters())


def test_load_balancing_loss_is_its_closed_form():
    """E sum_e f_e P_e: T 4 tokens, E 4, k 1 routed to experts 0, 1, 0, 3 (f = 1/2, 1/4, 0, 1/4)."""
    logits = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 2.0]])
    index, weights = route(logits, 1)
    assert index.flatten().tolist() == [0, 1, 0, 3] and torch.equal(weights, torch.ones(4, 1))
    big, small = math.e ** 2 / (math.e ** 2 + 3), 1 / (math.e ** 2 + 3)
    p = [(2 * big + 2 * small) / 4, (big + 3 * small) / 4, 4 * small / 4, (big + 3 * small) / 4]
    want = 4 * (0.5 * p[0] + 0.25 * p[1] + 0 * p[2] + 0.25 * p[3])
    assert float(load_balancing_loss(logits, index, 4)) == pytest.approx(want, rel=1e-6)
    assert float(load_balancing_loss(torch.zeros(4, 4), torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]]), 4)) == \
        pytest.approx(1.0)                                       # uniform router, even load: 1
    # k 2: f counts both choices of a token, over T k assignments
    index2, weights2 = route(torch.tensor([[3.0, 1.0, 0.0, 0.0]]), 2)
    assert index2.tolist() == [[0, 1]]
    torch.testing.assert_close(weights2, torch.softmax(torch.tensor([[3.0, 1.0]]), -1))


def test_training_loss_adds_the_weighted_aux_loss_and_evaluation_does_not():
    cfg = moe_config(**{"model.router_aux_loss": 0.5})
    engine = Engine(cfg, Context(), build_model(cfg))
    x, y = mp.global_batches(cfg, 1)[0][0]
    loss = engine.forward_loss(x, y)
    with torch.no_grad():
        logits = engine.base_model(x)
        aux = []
        h = engine.base_model.embed(x)
        for layer in engine.base_model.layers:
            a = layer.attention_norm(h)
            h = h + layer.attention(a)
            t = layer.ffn_norm(h).reshape(-1, cfg.model.dim)
            gate = layer.feed_forward.gate(t)
            aux.append(load_balancing_loss(gate, gate.topk(2, -1).indices, 4))
            h = h + layer.feed_forward(layer.ffn_norm(h))
    assert len(aux) == 4
    want = cross_entropy(logits, y) + 0.5 * torch.stack(aux).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    engine.model.eval()
    with torch.no_grad():
        assert float(engine.forward_loss(x, y)) == pytest.approx(float(cross_entropy(logits, y)), rel=1e-6)
    out = Engine(cfg, Context(), build_model(cfg)).train_step([(x, y)], 0.0)
    assert out["router_aux_loss"] == pytest.approx(float(torch.stack(aux).mean()), rel=1e-5)


@pytest.mark.parametrize("items, field", [({"model.n_experts": 4, "parallel.ep": 3}, "parallel.ep"),
                                          ({"model.n_experts": 0, "parallel.ep": 2}, "parallel.ep"),
                                          ({"parallel.dp": 2, "parallel.zero_stage": 1}, "parallel.zero_stage"),
                                          ({"parallel.tp": 2}, "model.n_experts")])
def test_what_does_not_run_is_refused_in_one_line(items, field):
    with pytest.raises(ConfigError) as e:
        mp.make_config({**workers.MOE, "parallel.dp": 2, **items})
    assert field in str(e.value).split(":")[0] and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# layouts against the single-process run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two():
    return spawn(workers.layouts, 2, TWO, timeout=300)


@pytest.fixture(scope="module")
def four():
    return spawn(workers.layouts, 4, FOUR, timeout=300)


def assert_matches_single_process(result: dict) -> None:
    ref = result["reference"]
    assert result["losses"] == pytest.approx(ref["losses"], rel=RTOL)
    assert len({tuple(r) for r in result["rank_losses"]}) == 1, "ranks logged different losses"
    assert result["grad_norm"] == pytest.approx(ref["grad_norm"], rel=RTOL)
    assert result["val_loss"] == pytest.approx(ref["val_loss"], rel=RTOL)
    for key in ("grads", "weights"):
        assert set(result[key]) == set(ref[key])
        for name, want in ref[key].items():
            torch.testing.assert_close(result[key][name], want, rtol=RTOL, atol=ATOL, msg=f"{key} {name}")


def assert_tokens_crossed_the_wire(result: dict, case: dict) -> None:
    cfg = moe_config(**case)
    m, p = cfg.model, cfg.parallel
    calls = result["calls"]                              # every rank's
    if p.ep == 1:
        assert all(not c for c in calls)
        return
    per = m.n_layers * result["n_micro"]                 # MoE blocks x micro-batches
    forwards = 1 if p.activation_checkpointing == "none" else 2     # backward recomputes the block's forward
    for mine in calls:
        counts = [c for c in mine if c[1] == "torch.int64"]
        rows = [c for c in mine if c[1] == "torch.float32"]
        assert counts == [("all_to_all", "torch.int64", 8 * m.n_experts, p.ep)] * per * forwards
        assert len(rows) == (2 * forwards + 2) * per and all(c[3] == p.ep for c in rows)
    tokens = p.micro_batch_size * cfg.seq_len
    assert sum(c[2] for mine in calls for c in mine if c[1] == "torch.float32") == \
        len(calls) * per * (2 * forwards + 2) * tokens * m.experts_per_token * m.dim * 4


@pytest.mark.parametrize("index", range(len(TWO)), ids=[str(c) for c in TWO])
def test_two_ranks_match_single_process(two, index):
    result = two[0]["layouts"][index]
    assert result["engine"] == ("ddp" if "parallel.implementation" in TWO[index] else "data_parallel")
    assert_matches_single_process(result)
    if "parallel.implementation" not in TWO[index]:
        assert_tokens_crossed_the_wire(result, TWO[index])


def test_four_ranks_dp4_ep2_match_single_process(four):
    assert_matches_single_process(four[0]["layouts"][0])
    assert_tokens_crossed_the_wire(four[0]["layouts"][0], FOUR[0])


def test_the_all_to_all_is_torchs(two):
    for rank in two:
        for ours, theirs in zip(rank["oracle"]["ours"], rank["oracle"]["torch"]):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

