"""Optimizers: which parameters decay, and the update rules of training.optimizer.

AdamW (Loshchilov & Hutter) keeps two fp32 moments per parameter: 8 bytes/param of state, which is what
ZeRO-1 shards. Weight decay applies to matrices only (not norms, biases). SGD uses momentum beta1.
The course's own update rules (SGD, AdamW, LARS, LAMB) live beside this in the data-parallel concept.
"""

from __future__ import annotations

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
    t = cfg.training
    groups = param_groups(model, t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, foreach=False)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.beta1, foreach=False)
    try:
        from llama_course import data_parallel  # noqa: F401  (registers lars, lamb)
    except ImportError:
        pass
    factory = OPTIMIZERS.get(t.optimizer)
    if factory is None:
        raise ConfigError(f"training.optimizer: '{t.optimizer}' is not available in this version")
    return factory(groups, cfg)


# name -> factory(param_groups, cfg) for optimizers written in the course's own code
OPTIMIZERS: dict = {}
