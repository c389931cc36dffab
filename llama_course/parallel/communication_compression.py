"""Gradient compression: send fewer bytes per all-reduce, at the price of an approximate gradient.

A data-parallel step all-reduces n gradient elements; the ring sends 2 (N-1)/N n e bytes per rank
(collectives.py). Each method below shrinks that, for one bucket of n elements on N ranks:

    method      what goes on the wire                                   bytes per rank               exact?
    none        fp32 ring all-reduce                                    2 (N-1)/N 4 n                yes
    fp16/bf16   cast to 16 bits, ring all-reduce, cast back             2 (N-1)/N 2 n                rounding only
    topk        k = ratio n largest |g + residual|: values + int32      (N-1) 8 k   (ring all-gather) no; error feedback
                indices, all-gathered; residual keeps what was not sent
    powersgd    per matrix M (a x b): P = M Q all-reduced, orthogonalised; 2 (N-1)/N 4 r (a + b) per      no; error feedback
                Q = M^T P all-reduced; M ~ P Q^T (rank r); vectors sent     matrix (+ vectors in fp32)
                uncompressed

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what compression drops this step is added
to the next step's gradient, so nothing is lost, only delayed; without it top-k and PowerSGD stall.
Top-k's indices make it an all-gather (every rank picks different entries), whose volume grows with N,
so it pays only for ratio << 1/N. PowerSGD (Vogels et al. 2019) reuses Q from the previous step (one
power iteration per step) and is what DDP's `powerSGD_hook` implements.

Seed questions: 8 and 15 (communication cost: compression), 20 (data-transfer optimisation).

    llama-course train configs/tiny.yaml --set parallel.compression=powersgd --set parallel.powersgd_rank=2
    python benchmarks/communication_compression.py        # loss curves and bytes of each method
"""

from __future__ import annotations

import torch

from llama_course.parallel import collectives as C


class Compressor:
    """No compression: the exact fp32 ring all-reduce (average over the group)."""

    name = "none"
    exact_reduce_scatter = True
    per_rank_state = False
    """True when each rank keeps its own state (error feedback): every rank checkpoints it."""

    def all_reduce(self, flat: torch.Tensor, layout: list, key, group, counter) -> None:
        """Average `flat` (one bucket; layout = [(offset, shape)] of its parameters) over the group, in place."""
        C.ring_all_reduce(flat, group, op="avg", check=False, counter=counter)

    def reduce_scatter(self, flat: torch.Tensor, group, counter) -> torch.Tensor:
        """Average `flat` over the group; return this rank's chunk (a view)."""
        return C.ring_reduce_scatter(flat, group, op="avg", check=False, counter=counter)

    def state_dict(self) -> dict:
        """What the next step's compression depends on (checkpoints resume bit-exactly with it)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""


class CastCompressor(Compressor):
    """fp16 / bf16 on the wire. Divide by N before the cast so the sum cannot overflow fp16."""

    def __init__(self, dtype: torch.dtype, name: str):
        self.dtype, self.name = dtype, name

    def all_reduce(self, flat, layout, key, group, counter):
        low = flat.div(C._size(group)).to(self.dtype)
        C.ring_all_reduce(low, group, op="sum", check=False, counter=counter)
        flat.copy_(low)

    def reduce_scatter(self, flat, group, counter):
        low = flat.div(C._size(group)).to(self.dtype)
        mine = C.ring_reduce_scatter(low, group, op="sum", check=False, counter=counter)
        lo, hi = C.chunk_range(flat.numel(), C._size(group), C._rank(group))
        flat[lo:hi].copy_(mine)
        return flat[lo:hi]


class TopKCompressor(Compressor):
    """Send the k largest entries of (gradient + residual); keep the rest as residual for the next step."""

    name = "topk"
    per_rank_state = True

    def __init__(self, ratio: float):
        if not 0 < ratio <= 1:                       # config validation refuses it with the field's name
            raise ValueError(f"top-k ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.residual: dict = {}

    def all_reduce(self, flat, layout, key, group, counter):
        n_ranks, n = C._size(group), flat.numel()
        e = flat + self.residual[key] if key in self.residual else flat.clone()
        k = max(1, int(self.ratio * n))
        idx = torch.topk(e.abs(), k, sorted=False).indices
        values = e[idx]
        e[idx] = 0.0
        self.residual[key] = e                                  # error feedback: what was not sent
        all_values = torch.zeros(k * n_ranks, dtype=flat.dtype, device=flat.device)
        all_idx = torch.zeros(k * n_ranks, dtype=torch.int32, device=flat.device)
        C.all_gather_into(all_values, values, group, check=False, counter=counter)
        C.all_gather_into(all_idx, idx.to(torch.int32), group, check=False, counter=counter)
        flat.zero_().index_add_(0, all_idx.long(), all_values).div_(n_ranks)

    def state_dict(self) -> dict:
        return {"residual": {k: v.clone() for k, v in self.residual.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.residual = {k: v.clone() for k, v in state.get("residual", {}).items()}


class PowerSGDCompressor(Compressor):
    """Rank-r PowerSGD with error feedback and warm-started Q (one power iteration per step)."""

    name = "powersgd"
    per_rank_state = True

    def __init__(self, rank: int, seed: int = 0):
        if rank < 1:                                 # config validation refuses it with the field's name
            raise ValueError(f"PowerSGD rank must be >= 1, got {rank}")
        self.rank, self.seed = rank, seed
        self.residual: dict = {}
        self.q: dict = {}

    def all_reduce(self, flat, layout, key, group, counter):
        self.device = flat.device
        if key in self.residual:
            flat.add_(self.residual[key])                       # error feedback
        start = flat.clone()
        matrices, rest = [], []
        for offset, shape in layout:
            numel = int(torch.Size(shape).numel())
            view = flat[offset: offset + numel]
            a, b = (shape[0], numel // shape[0]) if len(shape) >= 2 else (1, numel)
            r = min(self.rank, a, b)
            (matrices if len(shape) >= 2 and r * (a + b) < a * b else rest).append((view, a, b, r))
        if rest:                                                # vectors and small matrices: exact, fp32
            buf = torch.cat([v for v, *_ in rest])
            C.ring_all_reduce(buf, group, op="avg", check=False, counter=counter)
            o = 0
            for v, *_ in rest:
                v.copy_(buf[o: o + v.numel()])
                o += v.numel()
        if matrices:
            qs = [self._q(key, i, b, r) for i, (_, a, b, r) in enumerate(matrices)]
            ps = [v.view(a, b) @ q for (v, a, b, r), q in zip(matrices, qs)]        # P = M Q
            self._average(ps, group, counter)
            ps = [torch.linalg.qr(p).Q for p in ps]                                # orthonormal columns
            new_qs = [v.view(a, b).t() @ p for (v, a, b, r), p in zip(matrices, ps)]  # Q = M^T P
            self._average(new_qs, group, counter)
            for i, ((v, *_), p, q) in enumerate(zip(matrices, ps, new_qs)):
                v.copy_((p @ q.t()).view(-1))                                      # M ~ P Q^T
                self.q[(key, i)] = q
        self.residual[key] = start.sub_(flat)                  # what this rank's gradient lost

    def _q(self, key, i, cols, r):
        if (key, i) not in self.q:                               # the same random start on every rank
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key) * 1009 + i)
            self.q[(key, i)] = torch.randn(cols, r, generator=g, device="cpu").to(self.device)
        return self.q[(key, i)]

    @staticmethod
    def _average(tensors, group, counter):
        buf = torch.cat([t.reshape(-1) for t in tensors])
        C.ring_all_reduce(buf, group, op="avg", check=False, counter=counter)
        o = 0
        for t in tensors:
            t.view(-1).copy_(buf[o: o + t.numel()])
            o += t.numel()

    def reduce_scatter(self, flat, group, counter):
        raise ValueError("PowerSGD compresses all-reduces; the capability table refuses it with "
                                  "zero_stage 2 or 3")

    def state_dict(self) -> dict:
        """Error feedback (this rank's) and the warm-started Q of every matrix (the same on every rank)."""
        return {"residual": {k: v.clone() for k, v in self.residual.items()},
                "q": {k: v.clone() for k, v in self.q.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.residual = {k: v.clone() for k, v in state.get("residual", {}).items()}
        self.q = {k: v.clone() for k, v in state.get("q", {}).items()}


def build_compressor(cfg) -> Compressor:
    """The compressor of cfg.parallel.compression; with none, training.grad_reduce_dtype bf16/fp16 casts
    the reduction (fp32 gradients are summed in fp32 otherwise). The capability table keeps top-k and
    PowerSGD, which compress all-reduces, away from ZeRO-2/3's reduce-scatters."""
    p = cfg.parallel
    if p.compression == "fp16":
        return CastCompressor(torch.float16, "fp16")
    if p.compression == "bf16":
        return CastCompressor(torch.bfloat16, "bf16")
    if p.compression == "topk":
        return TopKCompressor(p.topk_ratio)
    if p.compression == "powersgd":
        return PowerSGDCompressor(p.powersgd_rank, cfg.training.seed)
    if cfg.training.grad_reduce_dtype in ("fp16", "bf16"):
        return CastCompressor(torch.float16 if cfg.training.grad_reduce_dtype == "fp16" else torch.bfloat16,
                              cfg.training.grad_reduce_dtype)
    return Compressor()
