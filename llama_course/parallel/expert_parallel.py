"""Expert parallelism: the experts of every MoE block split over ep data-parallel replicas.

A mixture of experts (core/moe.py) has E expert MLPs per block but each token uses only k of them, so the
experts are where the parameters are and not where the compute is. Expert parallelism (GShard, Switch,
DeepSeek's EP) keeps E/ep experts on each of ep replicas and moves the tokens to the experts instead:

    ep rank r holds experts [r E/ep, (r+1) E/ep) of every block (and the whole rest of the model)

    on each ep rank, per MoE block:
        x (T, d) ─ gate ─> top-k experts, weights                       (routing: local tokens only)
                 ─ sort the T k rows by expert ─ counts (E,) ─ all-to-all ─> who sends me how many
                 ─ all-to-all(rows) ───────────────> rows for my experts, from every ep rank
                                                     ─ expert_e(rows of e), e among mine
                 <────────────── all-to-all(outputs) (the reverse splits)
                 ─ y_t = sum_j w_j out_{t,j} (scatter-add back to the tokens)

The ep ranks are ep consecutive replicas of the data-parallel dimension (simulator/spec.py `ep_groups`):
they train on different sequences, like any replicas, and share their experts through the all-to-alls
(expert_parallel_comm.py; backward: the same exchanges reversed). Kept experts keep their global index
in their names (`layers.i.feed_forward.experts.e.w1.weight`), so checkpoints and spec.parameters match the
single-process model; `gather_full` collects the others' experts from the ep group.

Gradients. The loss is the mean over the R replicas, L = 1/R sum_r L_r. Everything but the experts is
replicated: its gradient is averaged over the R replicas (data_parallel.py, unchanged). An expert lives on
one rank of each ep group, and the all-to-all's backward already sums into it the contributions of every
token of that group's ep ranks; summing over the "expert data-parallel" group (the R/ep replicas holding
the same experts, stride ep) gives the sum over every replica, so

    grad expert_e = (1/R) sum_{edp group} owner's gradient          (not the mean over the edp group)

The load-balancing loss is computed on each rank's own tokens (f_e and P_e of its routing), as each
data-parallel rank does without expert parallelism. The course's data parallelism (ZeRO 0) runs it;
the capability table (simulator/capabilities.py) refuses the rest.

    llama-course train configs/tiny.yaml --set model.n_experts=4 --set parallel.ep=2 --set cluster.num_gpus=2
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from llama_course.core.engine_protocol import ModelTransform
from llama_course.core.moe import MoEFeedForward
from llama_course.parallel import collectives as C
from llama_course.parallel.expert_parallel_comm import all_to_all, exchange_counts


def is_expert(param: torch.Tensor) -> bool:
    """Whether a parameter is one of this rank's experts under expert parallelism (summed over edp)."""
    return getattr(param, "expert_parallel", False)


def reduce_expert_gradients(experts: list, edp_group, replicas: int, counter=None) -> torch.Tensor:
    """After backward: this rank's expert gradients (each already summing its ep group's tokens) summed over
    the expert data-parallel group and divided by ALL the replicas (the course's ring all-reduce of one flat
    buffer); the parameters' .grad become views into the returned buffer."""
    flat = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).reshape(-1) for q in experts])
    if edp_group is not None:
        C.ring_all_reduce(flat, edp_group, check=False, counter=counter)
    flat.div_(replicas)
    offset = 0
    for q in experts:
        q.grad = flat[offset:offset + q.numel()].view_as(q)
        offset += q.numel()
    return flat


class ExpertParallelMoE(MoEFeedForward):
    """MoEFeedForward on one ep rank: the same router, E/ep of the experts (named by their global index),
    and a dispatch by all-to-all over the ep group."""

    def __init__(self, moe: MoEFeedForward, group, ep: int, ep_rank: int):
        nn.Module.__init__(self)
        self.n_experts, self.top_k, self.aux_loss = moe.n_experts, moe.top_k, None
        self.gate = moe.gate
        self.group, self.ep, self.n_local = group, ep, moe.n_experts // ep
        first = ep_rank * self.n_local
        self.experts = nn.ModuleDict({str(e): moe.experts[e] for e in range(first, first + self.n_local)})
        for q in self.experts.parameters():
            q.expert_parallel = True

    def dispatch(self, tokens: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = index.shape[1]
        flat = index.flatten()                                      # (T k) assignments, token-major
        order = torch.argsort(flat, stable=True)                    # by expert, so by destination rank
        counts = torch.bincount(flat, minlength=self.n_experts)
        received = exchange_counts(counts, self.group)              # (ep, E/ep): sender x my expert
        in_splits = counts.view(self.ep, -1).sum(1).tolist()
        out_splits = received.sum(1).tolist()
        rows = all_to_all(tokens[order // k], out_splits, in_splits, self.group)
        local = torch.arange(self.n_local, device=tokens.device).repeat(self.ep)
        expert_of = torch.repeat_interleave(local, received.flatten())
        out = torch.zeros_like(rows)
        for j, expert in enumerate(self.experts.values()):         # every expert runs, zero rows included
            mine = (expert_of == j).nonzero(as_tuple=True)[0]
            out = out.index_add(0, mine, expert(rows[mine]).to(out.dtype))
        back = all_to_all(out, in_splits, out_splits, self.group)   # home, in the order the rows left
        weighted = back * weights.flatten()[order].unsqueeze(-1)
        return torch.zeros_like(tokens).index_add(0, order // k, weighted.to(tokens.dtype))


def _blocks(model: nn.Module) -> list:
    layers = model.layers
    return list(layers.values() if isinstance(layers, nn.ModuleDict) else layers)


class ExpertParallel(ModelTransform):
    """The model transform: every MoE block keeps this ep rank's experts and dispatches by all-to-all."""

    name = "expert_parallel"

    def __init__(self, cfg, ctx):
        self.ctx, self.n_experts = ctx, cfg.model.n_experts

    def apply(self, model: nn.Module) -> nn.Module:
        c = self.ctx
        for block in _blocks(model):
            if isinstance(block.feed_forward, MoEFeedForward):
                block.feed_forward = ExpertParallelMoE(block.feed_forward, c.ep_group, c.ep, c.ep_rank)
        return model

    def gather_full(self, ctx, named: dict) -> dict:
        """Every ep rank's experts under their global names (one all-gather per local expert tensor; every
        rank holds its experts' tensors in the same order, so the calls pair up)."""
        n_local = self.n_experts // ctx.ep
        out = {}
        for name, t in named.items():
            if ".experts." not in name:
                out[name] = t
                continue
            head, rest = name.split(".experts.", 1)
            e, tail = rest.split(".", 1)
            parts = [torch.empty_like(t) for _ in range(ctx.ep)]
            dist.all_gather(parts, t.contiguous(), group=ctx.ep_group)
            for r, part in enumerate(parts):
                out[f"{head}.experts.{r * n_local + int(e) % n_local}.{tail}"] = part
        return out
