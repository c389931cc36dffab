"""The course's optimizers (llama_course/core/optimizers.py) against torch.optim and closed forms."""

import copy

import torch

from llama_course.core import optimizers as O
from llama_course.core.model import build_model
from simulator.config import load_config


def _cfg(name, implementation="course"):
    return load_config({"model": {"preset": "tiny"}, "seq_len": 16,
                        "parallel": {"implementation": implementation},
                        "training": {"optimizer": name, "lr": 1e-2, "weight_decay": 0.1}})


def _run(cfg, model, steps=5):
    opt = O.build_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return opt


def test_adamw_and_sgd_match_torch_optim():
    for name in ("adamw", "sgd"):
        cfg = _cfg(name)
        ours, theirs = build_model(cfg), build_model(cfg)
        opt = _run(cfg, ours)
        ref = _run(_cfg(name, "torch"), theirs)
        assert type(opt).__module__ == "llama_course.core.optimizers" and type(ref).__module__.startswith("torch.optim")
        moved = 0.0
        for (n, a), b, c in zip(ours.named_parameters(), theirs.parameters(), build_model(cfg).parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"{name} {n}")
            moved = max(moved, float((a - c).detach().abs().max()))
        assert moved > 1e-3                    # the steps did something


def test_lars_and_lamb_one_step_closed_form():
    w0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    g = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    lr, wd = 0.5, 0.1
    # LAMB, step 1: m_hat = g, v_hat = g^2, r = g / (|g| + eps) + wd w
    w = w0.clone()
    w.grad = g.clone()
    O.LAMB([{"params": [w], "weight_decay": wd}], lr=lr, betas=(0.9, 0.99)).step()
    r = g / (g.abs() + 1e-8) + wd * w0
    torch.testing.assert_close(w, w0 - lr * w0.norm() / r.norm() * r)
    # LARS, step 1: trust = eta |w| / (|g| + wd |w|)
    w = w0.clone()
    w.grad = g.clone()
    O.LARS([{"params": [w], "weight_decay": wd}], lr=lr, momentum=0.9, eta=1e-3).step()
    trust = 1e-3 * w0.norm() / (g.norm() + wd * w0.norm())
    torch.testing.assert_close(w, w0 - lr * trust * (g + wd * w0))


def test_layer_norms_hook_sees_whole_layers():
    """Split one layer into two pieces; a layer_norms that combines them gives the unsplit step (ZeRO)."""
    w0 = torch.randn(10, 3, generator=torch.Generator().manual_seed(3))
    g = torch.randn(10, 3, generator=torch.Generator().manual_seed(4))
    whole = w0.clone()
    whole.grad = g.clone()
    O.LAMB([{"params": [whole], "weight_decay": 0.1}], lr=0.1).step()
    flat = w0.clone().view(-1)
    pieces = [flat[:13], flat[13:]]
    for p, gp in zip(pieces, (g.view(-1)[:13], g.view(-1)[13:])):
        p.grad = gp.clone()
    opt = O.LAMB([{"params": pieces, "weight_decay": 0.1}], lr=0.1)
    opt.layer_norms = lambda params, ts: [torch.sqrt(sum(t.float().pow(2).sum() for t in ts))] * len(ts)
    opt.step()
    torch.testing.assert_close(flat.view(10, 3), whole)


def test_state_dict_round_trip():
    cfg = _cfg("lamb")
    a, b = build_model(cfg), build_model(cfg)
    opt_a = _run(cfg, a, steps=2)
    opt_b = O.build_optimizer(cfg, b)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for m in (a, b):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
    opt_a.step()
    opt_b.step()
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
