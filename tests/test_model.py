"""The LLaMA model: shapes, causality, RoPE, GQA, parameter formula, KV cache, Hugging Face interop."""

import dataclasses

import pytest
import torch

from llama_course.core.hf import from_hf, to_hf
from llama_course.core.model import Transformer, apply_rope, num_params, rope_tables
from simulator.config import ModelConfig, load_config
from simulator.workload import count_params


def tiny(**kw):
    return dataclasses.replace(load_config(None).model, **kw)


def test_logits_shape_and_dtype():
    torch.manual_seed(0)
    model = Transformer(tiny(), max_seq_len=32)
    x = torch.randint(0, 512, (3, 17))
    assert model(x).shape == (3, 17, 512)


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_causal_future_tokens_do_not_change_the_past(arch):
    torch.manual_seed(0)
    model = Transformer(tiny(arch=arch), max_seq_len=32)
    x = torch.randint(0, 512, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 512, (2, 6))
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    hd = 16
    cos, sin = rope_tables(64, hd, 10000.0, "cpu")
    q, k = torch.randn(hd), torch.randn(hd)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, hd).expand(1, 1, 64, hd), cos, sin)[0, 0, m]
        kn = apply_rope(k.view(1, 1, 1, hd).expand(1, 1, 64, hd), cos, sin)[0, 0, n]
        return (qm * kn).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(score(0, 0), (q * k).sum(), rtol=1e-5, atol=1e-6)  # position 0 is identity
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Transformer(tiny(n_heads=4, n_kv_heads=2), max_seq_len=32)
    mha = Transformer(tiny(n_heads=4, n_kv_heads=4), max_seq_len=32)
    state = gqa.state_dict()
    hd = 64 // 4
    for name, w in list(state.items()):
        if name.endswith(("wk.weight", "wv.weight")):          # (kv*hd, d) -> each kv head serves 2 q heads
            state[name] = w.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    x = torch.randint(0, 512, (2, 12))
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"arch": "gpt"}, {"n_kv_heads": 4},
                                {"preset": "small", "dim": 256, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4,
                                 "ffn_dim": 688, "vocab_size": 4096}])
def test_parameter_count_formula_matches_the_module(kw):
    cfg = tiny(**kw)
    model = Transformer(cfg, max_seq_len=32)
    assert num_params(model) == count_params(cfg, seq_len=32)


def test_kv_cache_generation_equals_full_recompute():
    torch.manual_seed(0)
    model = Transformer(tiny(), max_seq_len=40).eval()
    prompt = torch.randint(0, 512, (2, 5))
    out = model.generate(prompt, max_new_tokens=10, temperature=0)
    seq = prompt
    for _ in range(10):                                         # greedy without a cache
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_hf_round_trip_matches_transformers_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = ModelConfig(preset=None, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160,
                      vocab_size=300, rope_theta=10000.0, norm_eps=1e-6)
    ours = Transformer(cfg, max_seq_len=64).eval()
    to_hf(ours, tmp_path / "m")
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32).eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), rtol=1e-4, atol=1e-4)
    back = from_hf(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=0)


def test_from_hf_loads_a_transformers_initialised_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    hf_cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    theirs = transformers.LlamaForCausalLM(hf_cfg).eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf").eval()
    assert ours.cfg.tie_embeddings and ours.cfg.n_kv_heads == 2
    x = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).logits, rtol=1e-4, atol=1e-4)
