"""Optimizers: which parameters decay, and the update rules of training.optimizer, written out.

For a parameter w with gradient g at step t (lr = learning rate, wd = weight decay, b1/b2 = beta1/beta2):

    SGD + momentum    g <- g + wd w;  m <- b1 m + g;  w <- w - lr m                     state: 1 tensor (4 B/param)
    AdamW             m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;                    state: 2 tensors (8 B/param)
                      w <- w (1 - lr wd) - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    LARS              trust = eta ||w|| / (||g|| + wd ||w||)   per layer (You et al. 2017)
                      m <- b1 m + lr trust (g + wd w);  w <- w - m                       state: 1 tensor
    LAMB              r = Adam direction (bias-corrected m / (sqrt(v) + eps)) + wd w
                      w <- w - lr (||w|| / ||r||) r   per layer (You et al. 2019)         state: 2 tensors

AdamW keeps two fp32 moments per parameter: 8 bytes/param of state, the largest term of the training
memory in fp32 (4 params + 4 grads + 8 state = 16 B/param), and what ZeRO-1 shards first. LARS and LAMB
scale each layer's step by a trust ratio ||w|| / ||update||, which keeps large-batch training (batches of
32k sequences, seed question 11) stable; the ratio needs whole-layer norms, so when ZeRO splits a layer
over ranks the engine supplies `layer_norms` that sums the squares of every rank's piece
(data_parallel.py). Weight decay applies to matrices only (not norms, biases).

`implementation: course` uses these classes; `implementation: torch` uses torch.optim.AdamW / SGD, the
oracle they are tested against (tests/test_optimizers.py checks the same steps give the same weights).

    llama-course train configs/tiny.yaml --set training.optimizer=lamb --set training.lr=1e-2

Seed questions: 11 (optimisation algorithms in distributed training: SGD, Adam(W), LARS/LAMB).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simulator.config import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list:
    """Two groups: matrices (decayed) and vectors (norm weights, biases: not decayed). Tied params once."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of cfg.training for a model (or a model shard)."""
    return optimizer_for_groups(cfg, param_groups(model, cfg.training.weight_decay))


def optimizer_for_groups(cfg, groups: list) -> torch.optim.Optimizer:
    """The optimizer of cfg.training over explicit param groups (ZeRO passes its shards' pieces)."""
    t = cfg.training
    if cfg.parallel.implementation == "torch" and t.optimizer == "adamw":
        cuda = any(p.is_cuda for g in groups for p in g["params"])     # one fused kernel on GPU
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8,
                                 foreach=False if not cuda else None, fused=True if cuda else None)
    if cfg.parallel.implementation == "torch" and t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.beta1, foreach=False)
    factory = OPTIMIZERS.get(t.optimizer)
    if factory is None:
        raise ConfigError(f"training.optimizer: '{t.optimizer}' is not available in this version")
    return factory(groups, cfg)


def local_layer_norms(params: list, tensors: list) -> list:
    """L2 norm of each tensor (params[i] is the parameter tensors[i] belongs to; unused here)."""
    return [torch.linalg.vector_norm(t.float()) for t in tensors]


class CourseOptimizer(torch.optim.Optimizer):
    """Shared plumbing: per-parameter state, `layer_norms` (replaced by ZeRO engines), steps under no_grad."""

    def __init__(self, params, defaults):
        super().__init__(params, defaults)
        self.layer_norms = local_layer_norms

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update(group, params)
        return loss

    def update(self, group: dict, params: list) -> None:
        """Apply this optimizer's rule to `params` of one param group (each subclass defines it)."""
        raise TypeError(f"{type(self).__name__} does not define update()")


class SGD(CourseOptimizer):
    """SGD with heavy-ball momentum and L2 weight decay (torch.optim.SGD with dampening 0)."""

    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def update(self, group, params):
        for p in params:
            g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
            state = self.state[p]
            if group["momentum"]:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()          # first step: m = g
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                g = state["momentum_buffer"]
            p.add_(g, alpha=-group["lr"])


class AdamW(CourseOptimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), the same arithmetic as torch.optim.AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def update(self, group, params):
        b1, b2 = group["betas"]
        for p in params:
            m, v, t = self._moments(p)
            p.mul_(1 - group["lr"] * group["weight_decay"])      # decoupled: decay the weight, not the gradient
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(group["eps"])
            p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** t))

    def _moments(self, p):
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        return state["exp_avg"], state["exp_avg_sq"], float(state["step"])


class LARS(CourseOptimizer):
    """Layer-wise adaptive rate scaling: SGD + momentum with a per-layer trust ratio (vectors: ratio 1)."""

    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=0.0, eta=1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    def update(self, group, params):
        wd = group["weight_decay"]
        w_norms = self.layer_norms(params, params)
        g_norms = self.layer_norms(params, [p.grad for p in params])
        for p, wn, gn in zip(params, w_norms, g_norms):
            trust = 1.0
            if wd and wn > 0 and gn > 0:              # decayed matrices adapt; norms and biases do not
                trust = group["eta"] * wn / (gn + wd * wn)
            state = self.state[p]
            step = (p.grad + wd * p) * (group["lr"] * trust)
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = step.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(step)
            p.sub_(state["momentum_buffer"])


class LAMB(AdamW):
    """Adam direction plus decoupled decay, scaled per layer by ||w|| / ||update|| (You et al. 2019)."""

    def update(self, group, params):
        b1, b2 = group["betas"]
        updates = []
        for p in params:
            m, v, t = self._moments(p)
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
            updates.append(r.add_(p, alpha=group["weight_decay"]))
        w_norms = self.layer_norms(params, params)
        u_norms = self.layer_norms(params, updates)
        for p, r, wn, un in zip(params, updates, w_norms, u_norms):
            trust = float(wn / un) if wn > 0 and un > 0 else 1.0
            p.add_(r, alpha=-group["lr"] * trust)


def _adam_args(cfg):
    t = cfg.training
    return dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8)


# name -> factory(param_groups, cfg) for optimizers written in the course's own code
OPTIMIZERS: dict = {
    "sgd": lambda groups, cfg: SGD(groups, lr=cfg.training.lr, momentum=cfg.training.beta1),
    "adamw": lambda groups, cfg: AdamW(groups, **_adam_args(cfg)),
    "lars": lambda groups, cfg: LARS(groups, lr=cfg.training.lr, momentum=cfg.training.beta1),
    "lamb": lambda groups, cfg: LAMB(groups, **_adam_args(cfg)),
}


def lr_at(step: int, cfg) -> float:
    """Linear warmup over warmup_steps, then cosine decay from lr to min_lr at training.steps (step is 0-based)."""
    t = cfg.training
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(t.steps - t.warmup_steps, 1)
    progress = min(max(step - t.warmup_steps, 0) / span, 1.0)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))
