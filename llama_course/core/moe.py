"""Mixture of experts (Mixtral's sparse MLP): a router sends each token to k of E expert MLPs.

`model.n_experts` E > 0 replaces every block's FeedForward with `MoEFeedForward`: a router `gate`
(dim -> E, no bias) and E experts, each a FeedForward of the model's kind (SwiGLU for LLaMA, GELU for GPT):

    x (T tokens, d) ─ gate ─> logits (T, E) ─ top-k ─> experts i_1..i_k of each token
                                           └ softmax over the k chosen logits ─> weights w_1..w_k
    y_t = sum_j w_j expert_{i_j}(x_t)

Dropless: every token reaches all k of its experts (no capacity factor): the tokens are gathered per
expert, each expert runs once on its tokens (zero tokens included, so every expert's parameters get a
gradient, zeros, on every rank, as a dense MLP's do), and the weighted outputs are scatter-added back.
Compute per token is k expert MLPs whatever E is: parameters grow with E, FLOPs with k.

Load balancing (Switch Transformer, Fedus et al. 2021): per block, on the tokens this module saw,

    aux = E sum_e f_e P_e     f_e = (token-to-expert assignments to e) / (T k),  P_e = mean_t softmax(logits_t)_e

(1 when the router is uniform and the load even). `aux_loss(model)` averages it over the blocks and the
engine adds `model.router_aux_loss` x it to the training loss (core/train_step.py); a held-out loss is the
cross-entropy alone. Under data (and expert) parallelism each rank computes f and P on its own tokens, as
the single process does on each micro-batch.

Expert parallelism (parallel/expert_parallel.py) keeps E/ep experts per rank and swaps `dispatch` for
all-to-alls; the router and the aux loss are the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def route(logits: torch.Tensor, k: int) -> tuple:
    """(expert indices (T, k), routing weights (T, k)) of router logits (T, E): the top-k logits, their
    softmax over the k (Mixtral: renormalised among the chosen, not over all E)."""
    top, index = logits.topk(k, dim=-1)
    return index, F.softmax(top.float(), dim=-1).to(logits.dtype)


def load_balancing_loss(logits: torch.Tensor, index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """E sum_e f_e P_e (Switch Transformer) of router logits (T, E) and the chosen experts (T, k)."""
    counts = torch.bincount(index.flatten(), minlength=n_experts).to(torch.float32)
    f = counts / index.numel()                              # share of the T k assignments
    p = F.softmax(logits.float(), dim=-1).mean(0)           # mean router probability
    return n_experts * (f * p).sum()


class MoEFeedForward(nn.Module):
    """The router and E experts of one block; `forward` keeps the block's shape (b, s, d). model.py builds
    it with its own Linear (dim -> E, no bias) as `gate` and its FeedForward as each expert."""

    def __init__(self, cfg, gate: nn.Module, experts: list):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.experts_per_token
        self.gate = gate
        self.experts = nn.ModuleList(experts)
        self.aux_loss = None
        """This forward's load-balancing loss (a tensor in the graph), read by `aux_loss(model)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        logits = self.gate(tokens)
        index, weights = route(logits, self.top_k)
        self.aux_loss = load_balancing_loss(logits, index, self.n_experts)
        return self.dispatch(tokens, index, weights).view_as(x)

    def dispatch(self, tokens: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_j w_j expert_{i_j}(x) per token: each expert on the tokens routed to it, scatter-added back."""
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token, slot = (index == e).nonzero(as_tuple=True)       # in token order: deterministic
            y = expert(tokens[token]) * weights[token, slot].unsqueeze(-1)
            out = out.index_add(0, token, y.to(out.dtype))
        return out


def moe_layers(model: nn.Module) -> list:
    """Every MoE MLP of a model (through DDP / compile wrappers)."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The load-balancing loss of the last forward, averaged over the MoE blocks (None: a dense model)."""
    losses = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).mean() if losses else None
