"""Data parallelism from scratch: naive, bucketed + overlapped, ZeRO-1, ZeRO-2, ZeRO-3 (and torch's FSDP2).

Every one of N ranks runs the whole model on G/N of the global batch; gradients are averaged so every
rank applies the same update as one process on all G sequences (engine.py: losses match dp = 1).
What differs is when gradients move and what each rank keeps. Psi = parameters, fp32 (4 bytes), Adam
K = 8 bytes of state per parameter, ring collectives (collectives.py):

    parallel.*                      communication per step and rank          memory per rank (params+grads+optim)
    zero_stage 0, bucket_mb 0       one all-reduce per tensor after backward 4Psi + 4Psi + 8Psi
    zero_stage 0, bucket_mb > 0     all-reduce of ~bucket_mb buckets as      4Psi + 4Psi + 8Psi
      overlap true                  backward produces them (hooks)
    zero_stage 1                    all-reduce 2(N-1)/N 4Psi, then           4Psi + 4Psi + 8Psi/N
                                    all-gather of updated params (N-1)/N 4Psi
    zero_stage 2                    reduce-scatter (N-1)/N 4Psi + all-gather 4Psi + 4Psi/N + 8Psi/N
    zero_stage 3                    all-gather params per layer in forward   4Psi/N + 4Psi/N + 8Psi/N
                                    and again in backward of each of m         (+ one layer gathered at a time)
                                    micro-batches, one reduce-scatter:
                                    (2m + 1)(N-1)/N 4Psi (m = 1: 1.5x plain)

Memory is what a rank holds between steps (the ZeRO paper's count, and what `memory_bytes()` measures);
during backward the gradients of one micro-batch also exist as ordinary p.grad tensors, and with
gradient accumulation ZeRO-2/3 keep the whole model's p.grad until the last micro-batch, as FSDP2's
set_requires_gradient_sync(False) does. Sharded engines checkpoint one shard per rank.

Hooks (autograd, for students): `p.register_post_accumulate_grad_hook(h)` calls h(p) once per backward,
right after p.grad received this backward's gradient; when every parameter of a bucket has fired, the
bucket is complete and goes to the communication thread (collectives.CommThread) while backward keeps
computing earlier layers. Micro-batches but the last skip communication: gradients just accumulate in
p.grad. ZeRO-3 registers forward pre-hooks that all-gather a layer's parameters just before it runs,
forward hooks that free them right after, and a hook on the layer's output tensor, which autograd calls
when the gradient w.r.t. that output is ready: the moment just before the layer's own backward, when its
parameters must be gathered again. Freed means the flat buffer's storage is resized to 0 bytes; the
parameters stay views into it, so tensors autograd saved in forward see the data again once regathered.

Frozen parameters (requires_grad False) join no bucket and, in ZeRO-3, stay whole on every rank.
Assumption: every rank uses the same set of parameters in a step (true for a dense LLaMA). A parameter
no rank used keeps grad None, as in the single-process run; mixture-of-experts routing would need
DDP's find_unused_parameters bitmap exchange.

implementation: torch maps zero_stage 3 to FSDP2 `fully_shard` per block and at the root; zero_stage 1
and 2 to FSDP2 with reshard_after_forward=False (parameters stay gathered between forward and backward,
gradients reduce-scattered: ZeRO-2; torch has no ZeRO-1 in FSDP2, ZeroRedundancyOptimizer is DDP-only).

Seed questions: 1 (data vs model parallel), 7 (keeping replicas in sync), 22 (choosing the degree: the
memory column), 26 (aggregating parameters: averaging), and 15/27 (overlapping communication).

    llama-course train configs/tiny.yaml --set parallel.bucket_mb=0              # naive
    llama-course train configs/tiny.yaml --set parallel.zero_stage=3 --nproc 4   # ZeRO-3
    python benchmarks/data_parallel.py --nproc 2                                 # tokens/s of each, and DDP
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from llama_course.core.optimizers import optimizer_for_groups
from llama_course.engine import ENGINES, Engine
from llama_course.parallel import collectives as C
from llama_course.parallel.communication_compression import build_compressor
from simulator import spec


class Unit:
    """Parameters flattened into one buffer: a gradient bucket (stages 0-2) or one layer (stage 3).
    Rank r owns elements [lo, hi) = chunk r of the flat buffer (collectives.chunk_range)."""

    def __init__(self, index: int, params: list, n_ranks: int, rank: int):
        self.index, self.params = index, params
        self.offsets, o = [], 0
        for p in params:
            self.offsets.append(o)
            o += p.numel()
        self.numel = o
        self.lo, self.hi = C.chunk_range(o, n_ranks, rank)
        self.layout = [(off, tuple(p.shape)) for off, p in zip(self.offsets, params)]
        self.dtype, self.device = params[0].dtype, params[0].device
        self.flat = self.shard = self.grad_flat = self.grad_shard = None
        self.ready: set = set()          # ids of params whose gradient of this backward has arrived
        self.launched = self.packed = False
        self.unused: set = set()          # ids of params no rank used this step (grad stays None)
        self.gathered = True

    def slices(self):
        for p, off in zip(self.params, self.offsets):
            yield p, off, off + p.numel()


class DataParallelEngine(Engine):
    """The course's data parallelism; `parallel.zero_stage` chooses how much each rank shards."""

    name = "data_parallel"

    # ---- setup ------------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        p, ctx = self.cfg.parallel, self.ctx
        self.stage, self.group = p.zero_stage, ctx.dp_group
        self.n_ranks, self.rank = C._size(self.group), C._rank(self.group)
        self.compressor = build_compressor(self.cfg)
        self.wire = C.WireCounter()
        self.overlap = p.overlap and (p.bucket_mb > 0 or self.stage == 3)
        self.comm = C.CommThread(_copy_of_dp_group(ctx)) if self.overlap else None
        self.final, self.next_launch = False, 0             # backward outside train_step: no communication
        trainable = list({id(q): q for q in model.parameters() if q.requires_grad}.values())
        with torch.no_grad():                                  # replicas start equal: rank 0's weights
            for q in model.parameters():
                C.tree_broadcast(q.data, 0, self.group, check=False)
        self.units = self._layer_units(model, trainable) if self.stage == 3 else self._buckets(trainable)
        self.unit_of = {id(q): u for u in self.units for q in u.params}
        for u in self.units:
            self._materialise(u)
        for q in trainable:                                    # fires after q.grad got this backward's part
            q.register_post_accumulate_grad_hook(self._on_grad_ready)
        if self.stage == 3:
            self._register_gather_hooks(model)
        return model

    def __init__(self, cfg, ctx, model, tracer=None):
        super().__init__(cfg, ctx, model, tracer)
        if self.stage >= 1:                                    # the optimizer sees only this rank's pieces
            self.pieces, self.piece_param = [], {}
            groups = [{"params": [], "weight_decay": cfg.training.weight_decay}, {"params": [], "weight_decay": 0.0}]
            for u in self.units:
                for q, a, b in u.slices():
                    a, b = max(a, u.lo), min(b, u.hi)
                    if a < b:
                        piece = (u.shard[a - u.lo: b - u.lo] if self.stage == 3 else u.flat[a:b])
                        self.pieces.append((piece, u, q, a))
                        self.piece_param[id(piece)] = self._param_index(q)
                        groups[0 if q.dim() >= 2 else 1]["params"].append(piece)
            self.optimizer = optimizer_for_groups(cfg, groups)
            if hasattr(self.optimizer, "layer_norms"):
                self.optimizer.layer_norms = self._layer_norms

    def _buckets(self, trainable: list) -> list:
        """Reverse registration order ~ the order backward produces gradients; ~bucket_mb MiB each (0: per
        tensor), the first at most 1 MiB, as in DDP: the plan of simulator/spec.py, which the simulator uses."""
        order = list(reversed(trainable))
        plan = spec.bucket_plan([q.numel() * q.element_size() for q in order], self.cfg.parallel.bucket_mb)
        return [Unit(i, [order[j] for j in ids], self.n_ranks, self.rank) for i, ids in enumerate(plan)]

    def _layer_units(self, model: nn.Module, trainable: list) -> list:
        """ZeRO-3: one unit per transformer block (last block first) and a root unit for the rest."""
        ids = {id(q) for q in trainable}
        layers = list(getattr(model, "layers", []))
        units, taken = [], set()
        for layer in reversed(layers):
            ps = [q for q in layer.parameters() if id(q) in ids and id(q) not in taken]
            taken |= {id(q) for q in ps}
            if ps:
                units.append((layer, ps))
        rest = [q for q in trainable if id(q) not in taken]
        if rest:
            units.append((model, rest))
        out = []
        for i, (module, ps) in enumerate(units):
            u = Unit(i, ps, self.n_ranks, self.rank)
            u.module = module
            out.append(u)
        return out

    def _materialise(self, u: Unit) -> None:
        """Stages 1-3: the unit's parameters become views into one flat buffer (all-gathers write there)."""
        if self.stage >= 1:
            with torch.no_grad():
                u.flat = torch.cat([q.detach().reshape(-1) for q in u.params])
                for q, a, b in u.slices():
                    q.data = u.flat[a:b].view_as(q)
        if self.stage <= 1:
            u.grad_flat = torch.zeros(u.numel, dtype=u.dtype, device=u.device)
        if self.stage >= 2:
            u.grad_shard = torch.zeros(u.hi - u.lo, dtype=u.dtype, device=u.device)
        if self.stage == 3:
            u.shard = u.flat[u.lo:u.hi].clone()
            self._free(u)

    # ---- ZeRO-3: gather before use, free after ------------------------------------------------------
    def _register_gather_hooks(self, model: nn.Module) -> None:
        for u in self.units:
            if u.module is model:                               # root: kept from forward start to backward end
                model.register_forward_pre_hook(lambda m, args, u=u: self._gather(u))
                model.register_forward_hook(lambda m, args, out, u=u: None if torch.is_grad_enabled() else self._free(u))
            else:
                u.module.register_forward_pre_hook(lambda m, args, u=u: self._gather(u))
                u.module.register_forward_hook(lambda m, args, out, u=u: self._after_forward(u, out))

    def _after_forward(self, u: Unit, out) -> None:
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
            # called with d loss / d out, just before this layer's backward: bring its weights back
            out.register_hook(lambda grad, u=u: self._gather(u))
        if torch._C._current_graph_task_id() == -1:             # not an activation-checkpoint recompute
            self._free(u)                                       # inside backward: freed when its grads are done

    def _gather(self, u: Unit) -> None:
        if u.gathered:
            return
        with self.tracer.span("all_gather", "comm"), torch.no_grad():
            u.flat.untyped_storage().resize_(u.numel * u.flat.element_size())
            u.flat[u.lo:u.hi].copy_(u.shard)
            C.ring_all_gather(u.flat, self.group, check=False, counter=self.wire)
        u.gathered = True

    def _free(self, u: Unit) -> None:
        u.flat.untyped_storage().resize_(0)
        u.gathered = False

    # ---- gradients ----------------------------------------------------------------------------------
    def sync_context(self, is_last_micro: bool):
        self.final = is_last_micro
        for u in self.units:
            u.ready.clear()
        return nullcontext()

    def forward_backward(self, micro_batches: list) -> float:
        for q in self.base_model.parameters():
            q.grad = None
        for u in self.units:
            u.launched, u.unused = False, set()
        self.next_launch = 0
        return super().forward_backward(micro_batches)

    def _on_grad_ready(self, q: torch.Tensor) -> None:
        u = self.unit_of[id(q)]
        u.ready.add(id(q))
        if len(u.ready) == len(u.params):
            self._complete(u)

    def _complete(self, u: Unit) -> None:
        """Every gradient of the unit arrived (or was filled in at the end of backward)."""
        if self.final:
            self._pack(u)
            if self.overlap:
                self._launch_ready()
        if self.stage == 3:                                     # its backward is done: drop the weights
            self._free(u)

    def _pack(self, u: Unit) -> None:
        """Copy p.grad into the unit's flat gradient buffer (and drop p.grad when it is sharded)."""
        if u.grad_flat is None:
            u.grad_flat = torch.empty(u.numel, dtype=u.dtype, device=u.device)
        for q, a, b in u.slices():
            if q.grad is None:
                u.grad_flat[a:b].zero_()
            else:
                u.grad_flat[a:b].copy_(q.grad.reshape(-1))
            q.grad = u.grad_flat[a:b].view_as(q) if self.stage <= 1 else None
        u.packed = True

    def _launch_ready(self) -> None:
        """Launch packed units strictly in index order, so every rank issues the same sequence."""
        while self.next_launch < len(self.units) and self.units[self.next_launch].packed:
            u = self.units[self.next_launch]
            u.packed, u.launched = False, True
            if self.comm is not None:
                self.comm.submit(lambda group, u=u: self._communicate(u, group))
            else:
                self._communicate(u, self.group)
            self.next_launch += 1

    def _communicate(self, u: Unit, group) -> None:
        import time

        start = time.perf_counter()
        if self.stage <= 1:
            self.compressor.all_reduce(u.grad_flat, u.layout, u.index, group, self.wire)
            name = "all_reduce"
        else:
            mine = self.compressor.reduce_scatter(u.grad_flat, group, self.wire)
            u.grad_shard.copy_(mine)
            u.grad_flat = None                                  # ZeRO-2/3: the full gradient is not kept
            name = "reduce_scatter"
        self.tracer.add(name, "comm", start, time.perf_counter() - start, bucket=u.index)

    def reduce_gradients(self) -> None:
        # parameters that never fired this backward: gradient from earlier micro-batches, or unused (zeros)
        for u in self.units:
            if not u.launched and not u.packed:
                u.unused = {id(q) for q in u.params if q.grad is None}
                self._pack(u)
            if self.stage == 3 and u.gathered:
                self._free(u)
        self._launch_ready()
        if self.comm is not None:
            self.comm.wait()
        self.final = False
        for u in self.units:
            for q in u.params:
                if id(q) in u.unused:
                    q.grad = None
        if self.stage >= 1:
            for piece, u, q, a in self.pieces:
                piece.grad = None if id(q) in u.unused else (
                    u.grad_flat[a:a + piece.numel()] if self.stage == 1 else u.grad_shard[a - u.lo: a - u.lo + piece.numel()])

    # ---- norms, clipping, step -------------------------------------------------------------------------
    def grad_norm(self) -> torch.Tensor:
        if self.stage <= 1:
            return super().grad_norm()
        sq = torch.zeros(1, dtype=torch.float64, device=self.ctx.device)
        for piece, *_ in self.pieces:
            if piece.grad is not None:
                sq += piece.grad.double().pow(2).sum()
        C.ring_all_reduce(sq, self.group, check=False, counter=self.wire)
        return sq.sqrt().float()[0]

    def scale_gradients(self, factor: float) -> None:
        if self.stage <= 1:
            return super().scale_gradients(factor)
        for piece, *_ in self.pieces:
            if piece.grad is not None:
                piece.grad.mul_(factor)

    def optimizer_step(self, lr: float) -> None:
        super().optimizer_step(lr)
        if self.stage in (1, 2):                                # everyone needs everyone's updated shard
            with self.tracer.span("all_gather", "comm"):
                for u in self.units:
                    C.ring_all_gather(u.flat, self.group, check=False, counter=self.wire)

    def train_step(self, micro_batches: list, lr: float) -> dict:
        self.wire.take()
        out = super().train_step(micro_batches, lr)
        out["bytes_sent"] = self.wire.take()
        return out

    def _param_index(self, q) -> int:
        if not hasattr(self, "_index"):
            self._index = {id(x): i for i, x in enumerate({id(x): x for x in self.base_model.parameters()}.values())}
        return self._index[id(q)]

    def _layer_norms(self, params: list, tensors: list) -> list:
        """LARS/LAMB trust ratios need whole-layer norms: add every rank's squares per parameter."""
        sq = torch.zeros(len(self._index), dtype=torch.float64, device=self.ctx.device)
        for piece, t in zip(params, tensors):
            sq[self.piece_param[id(piece)]] += t.double().pow(2).sum()
        C.ring_all_reduce(sq, self.group, check=False, counter=self.wire)
        return [sq[self.piece_param[id(piece)]].sqrt().float() for piece in params]

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.stage == 0:
            return super().state_dict()
        return {"shards": [(u.shard if self.stage == 3 else u.flat[u.lo:u.hi]).clone() for u in self.units],
                "frozen": {n: t.detach().clone() for n, t in self.base_model.named_parameters() if not t.requires_grad},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.stage == 0:
            return super().load_state_dict(state)
        with torch.no_grad():
            for u, shard in zip(self.units, state["shards"]):
                (u.shard if self.stage == 3 else u.flat[u.lo:u.hi]).copy_(shard)
                if self.stage in (1, 2):
                    C.ring_all_gather(u.flat, self.group, check=False)
            named = dict(self.base_model.named_parameters())
            for n, t in state["frozen"].items():
                named[n].copy_(t)
        self.optimizer.load_state_dict(state["optimizer"])

    def full_model_state(self) -> dict | None:
        if self.stage == 3:
            for u in self.units:
                self._gather(u)
        state = {k: v.clone() for k, v in self.base_model.state_dict().items()} if self.ctx.rank == 0 else None
        if self.stage == 3:
            for u in self.units:
                self._free(u)
        return state

    def checkpoint_writer(self) -> bool:
        return self.stage == 0 and self.ctx.dp_rank == 0 or self.stage > 0

    def checkpoint_source_rank(self) -> int:
        return super().checkpoint_source_rank() if self.stage == 0 else self.ctx.rank

    def memory_bytes(self) -> dict:
        """Bytes this rank holds after a step, by kind (distinct storages; freed ZeRO-3 buffers count 0)."""
        def total(tensors):
            seen = {}
            for t in tensors:
                if t is not None:
                    s = t.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
            return sum(seen.values())
        params = [q for q in self.base_model.parameters()] + [u.shard for u in self.units]
        grads = [q.grad for q in self.base_model.parameters()] + [u.grad_flat for u in self.units] + \
                [u.grad_shard for u in self.units]
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return {"params": total(params), "grads": total(grads), "optimizer": total(state)}


class FSDP2Engine(Engine):
    """torch's FSDP2: `fully_shard` each transformer block, then the root (embeddings, norm, head)."""

    name = "fsdp2"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        c = self.ctx
        mesh = init_device_mesh(c.device_type, (c.dp,))
        reshard = self.cfg.parallel.zero_stage >= 3
        for layer in getattr(model, "layers", []):
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        return model

    def sync_context(self, is_last_micro: bool):
        self.model.set_requires_gradient_sync(is_last_micro)
        return nullcontext()

    def grad_norm(self) -> torch.Tensor:
        sq = torch.zeros(1, dtype=torch.float64, device=self.ctx.device)
        for q in self.base_model.parameters():
            if q.grad is not None:
                sq += q.grad.to_local().double().pow(2).sum()
        dist.all_reduce(sq, group=self.ctx.dp_group)
        return sq.sqrt().float()[0]

    def state_dict(self) -> dict:
        local = lambda x: x.to_local().clone() if hasattr(x, "to_local") else x  # noqa: E731
        opt = self.optimizer.state_dict()
        opt["state"] = {k: {n: local(t) for n, t in s.items()} for k, s in opt["state"].items()}
        return {"model": {k: local(v) for k, v in self.base_model.state_dict().items()}, "optimizer": opt}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.tensor import DTensor

        with torch.no_grad():
            for k, v in self.base_model.state_dict().items():
                (v.to_local() if isinstance(v, DTensor) else v).copy_(state["model"][k])
        params = [q for g in self.optimizer.param_groups for q in g["params"]]
        opt = state["optimizer"]
        for k, s in opt["state"].items():
            q = params[int(k)]
            opt["state"][k] = {n: DTensor.from_local(t, q.device_mesh, q.placements) if t.dim() > 0 else t
                               for n, t in s.items()}
        self.optimizer.load_state_dict(opt)

    def full_model_state(self) -> dict | None:
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in self.base_model.state_dict().items()}
        return full if self.ctx.rank == 0 else None

    def checkpoint_writer(self) -> bool:
        return True

    def checkpoint_source_rank(self) -> int:
        return self.ctx.rank


def _copy_of_dp_group(ctx):
    """A second process group over this rank's dp group (every rank creates every dp group, in order)."""
    mine = None
    for ranks in spec.groups("dp", ctx.dp, ctx.tp, ctx.pp):
        group = dist.new_group(ranks, timeout=_timeout())
        if ctx.rank in ranks:
            mine = group
    return mine


def _timeout():
    from llama_course.core.distributed import default_timeout

    return default_timeout()


ENGINES["data_parallel"] = DataParallelEngine
ENGINES["fsdp2"] = FSDP2Engine
