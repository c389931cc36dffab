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
Assumption: every rank uses the same set of parameters in a step (true for a dense LLaMA, and for a
mixture of experts, core/moe.py, whose every expert runs, on zero tokens if need be). A parameter no rank
used keeps grad None, as in the single-process run. Expert parallelism's experts (expert_parallel.py)
join no bucket: after backward they are summed over the expert data-parallel group and divided by the
replicas (ZeRO 0 only).

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

import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from llama_course.core.engine_protocol import GradientSync
from llama_course.parallel import collectives as C
from llama_course.parallel.data_parallel_comm import Unit, _copy_of_dp_group, bucket_plan
from llama_course.parallel.expert_parallel import is_expert, reduce_expert_gradients
from simulator import spec


class DataParallelSync(GradientSync):
    """The course's data parallelism as the engine's gradient sync; `parallel.zero_stage` chooses how
    much each rank shards. It runs over the dp group of whatever part of the model this rank holds (the
    whole model, a tensor-parallel shard, pipeline stages: Megatron-LM's distributed optimizer)."""

    name = "data_parallel"

    def __init__(self, cfg, ctx, compressor, deferred: bool = False):
        p = cfg.parallel
        self.cfg, self.ctx, self.compressor = cfg, ctx, compressor
        self.stage, self.group = p.zero_stage, ctx.dp_group
        self.span = spec.gradient_sync_event(self.stage)
        self.deferred = deferred                           # reduce only after backward (a plan drops gradients)
        self.overlap = p.overlap and (p.bucket_mb > 0 or self.stage == 3) and not deferred
        self.wire = C.WireCounter()

    # ---- setup ------------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        ctx = self.ctx
        self.n_ranks, self.rank = C._size(self.group), C._rank(self.group)
        self.comm = C.CommThread(_copy_of_dp_group(ctx)) if self.overlap else None
        self.final, self.next_launch = False, 0             # backward outside train_step: no communication
        trainable = list({id(q): q for q in model.parameters() if q.requires_grad}.values())
        self.experts = [q for q in trainable if is_expert(q)]         # expert parallelism: summed over edp
        trainable = [q for q in trainable if not is_expert(q)]
        if self.experts and self.stage:
            raise ValueError("expert parallelism runs with parallel.zero_stage 0 only")
        self.expert_flat = None
        self.name_of = {id(q): n for n, q in model.named_parameters()}
        with torch.no_grad():                                  # replicas start equal: rank 0's weights
            for q in model.parameters():                       # (an expert: its edp group's first's)
                group = ctx.edp_group if is_expert(q) else self.group
                if group is not None:
                    C.tree_broadcast(q.data, 0, group, check=False)
        self.units = self._layer_units(model, trainable) if self.stage == 3 else self._buckets(trainable)
        self.unit_of = {id(q): u for u in self.units for q in u.params}
        for u in self.units:
            self._materialise(u)
        for q in trainable:                                    # fires after q.grad got this backward's part
            q.register_post_accumulate_grad_hook(self._on_grad_ready)
        if self.stage == 3:
            self._register_gather_hooks(model)
        self.pieces = []
        return model

    def optimizer_groups(self) -> list | None:
        """ZeRO-1/2/3: the optimizer sees only this rank's pieces (slices of the flat buffers)."""
        if self.stage == 0:
            return None
        self.piece_param = {}
        groups = [{"params": [], "weight_decay": self.cfg.training.weight_decay}, {"params": [], "weight_decay": 0.0}]
        index = {id(x): i for i, x in enumerate({id(x): x for x in self.engine.base_model.parameters()}.values())}
        self.n_params = len(index)
        for u in self.units:
            for q, a, b in u.slices():
                a, b = max(a, u.lo), min(b, u.hi)
                if a < b:
                    piece = (u.shard[a - u.lo: b - u.lo] if self.stage == 3 else u.flat[a:b])
                    self.pieces.append((piece, u, q, a))
                    self.piece_param[id(piece)] = index[id(q)]
                    groups[0 if q.dim() >= 2 else 1]["params"].append(piece)
        return groups

    def attach_optimizer(self, optimizer) -> None:
        if self.stage >= 1 and hasattr(optimizer, "layer_norms"):      # course LARS / LAMB
            optimizer.layer_norms = self._layer_norms

    def _buckets(self, trainable: list) -> list:
        return [Unit(i, ps, self.n_ranks, self.rank)
                for i, ps in enumerate(bucket_plan(trainable, self.cfg.parallel.bucket_mb))]

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
        with self.engine.tracer.span("all_gather", "comm"), torch.no_grad():
            u.flat.untyped_storage().resize_(u.numel * u.flat.element_size())
            u.flat[u.lo:u.hi].copy_(u.shard)
            C.ring_all_gather(u.flat, self.group, check=False, counter=self.wire)
        u.gathered = True

    def _free(self, u: Unit) -> None:
        u.flat.untyped_storage().resize_(0)
        u.gathered = False

    # ---- gradients ----------------------------------------------------------------------------------
    def begin_step(self) -> None:
        self.wire.take()                                       # bytes of this step only
        for q in self.engine.base_model.parameters():
            q.grad = None
        for piece, *_ in self.pieces:
            piece.grad = None
        for u in self.units:
            u.launched, u.packed, u.unused = False, False, set()
            u.ready.clear()
        self.next_launch, self.final = 0, False

    def micro_batch(self, last: bool):
        """Micro-batches but the last only accumulate p.grad; the last one's hooks pack and send buckets."""
        self.final = last and not self.deferred
        for u in self.units:
            u.ready.clear()
        return nullcontext()

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
        start = time.perf_counter()
        if self.stage <= 1:
            self.compressor.all_reduce(u.grad_flat, u.layout, u.index, group, self.wire)
            name = "all_reduce"
        else:
            mine = self.compressor.reduce_scatter(u.grad_flat, group, self.wire)
            u.grad_shard.copy_(mine)
            u.grad_flat = None                                  # ZeRO-2/3: the full gradient is not kept
            name = "reduce_scatter"
        self.engine.tracer.add(name, "comm", start, time.perf_counter() - start, bucket=u.index)

    def reduce(self) -> None:
        # parameters that never fired this backward: gradient from earlier micro-batches, or unused (zeros)
        unused = self._unused_everywhere() if self.deferred else None
        for u in self.units:
            if not u.launched and not u.packed:
                u.unused = {id(q) for q in u.params if q.grad is None} if unused is None else unused & set(u.ids)
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
        if self.experts:                    # summed over the expert data-parallel group, / the replicas
            self.expert_flat = reduce_expert_gradients(self.experts, self.ctx.edp_group, self.n_ranks, self.wire)
        for piece, u, q, a in self.pieces:
            piece.grad = None if id(q) in u.unused else (
                u.grad_flat[a:a + piece.numel()] if self.stage == 1 else u.grad_shard[a - u.lo: a - u.lo + piece.numel()])

    def _unused_everywhere(self) -> set:
        """Ids of the parameters no rank of the dp group gave a gradient this step (one all-reduce of a flag
        per parameter). A deferred reduction may follow a rank that computed nothing (a load-balanced share
        of 0 sequences, an abandoned backup worker): its missing gradients are zeros, not 'unused'."""
        params = [q for u in self.units for q in u.params]
        used = torch.tensor([float(q.grad is not None) for q in params], device=self.ctx.device)
        if self.n_ranks > 1:
            dist.all_reduce(used, op=dist.ReduceOp.MAX, group=self.group)
        return {id(q) for q, flag in zip(params, used.tolist()) if not flag}

    # ---- what the optimizer reads, norms, the step ---------------------------------------------------
    def grads(self) -> list:
        if self.stage <= 1:                                     # whole flat buffers (p.grad are views)
            experts = [self.expert_flat] if self.experts and self.expert_flat is not None else []
            return [u.grad_flat for u in self.units if u.grad_flat is not None] + experts
        return [u.grad_shard for u in self.units]

    def norm_terms(self) -> list:
        if self.stage <= 1:
            return super().norm_terms()
        return [(self.name_of[id(q)], q, piece.grad) for piece, _, q, _ in self.pieces if piece.grad is not None]

    def norm_group(self):
        return self.group if self.stage >= 2 else None

    def finish_step(self, lr: float, norm: float, skipped: bool) -> dict:
        if skipped:
            for q in self.engine.base_model.parameters():
                q.grad = None
            for piece, *_ in self.pieces:
                piece.grad = None
            return {}
        self.engine.clip_and_step(lr, norm)
        if self.stage in (1, 2):                                # everyone needs everyone's updated shard
            with self.engine.tracer.span("all_gather", "comm"):
                for u in self.units:
                    C.ring_all_gather(u.flat, self.group, check=False, counter=self.wire)
        return {}

    def metrics(self) -> dict:
        return {"bytes_sent": self.wire.take()}

    def _layer_norms(self, params: list, tensors: list) -> list:
        """LARS/LAMB trust ratios need whole-layer norms: add every rank's squares per parameter."""
        sq = torch.zeros(self.n_params, dtype=torch.float64, device=self.ctx.device)
        for piece, t in zip(params, tensors):
            sq[self.piece_param[id(piece)]] += t.double().pow(2).sum()
        C.ring_all_reduce(sq, self.group, check=False, counter=self.wire)
        return [sq[self.piece_param[id(piece)]].sqrt().float() for piece in params]

    @contextmanager
    def gathered(self):
        if self.stage == 3:
            for u in self.units:
                self._gather(u)
        try:
            yield
        finally:
            if self.stage == 3:
                for u in self.units:
                    self._free(u)

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        e = self.engine
        state = super().state_dict() if self.stage == 0 else {
            "shards": [(u.shard if self.stage == 3 else u.flat[u.lo:u.hi]).clone() for u in self.units],
            "frozen": {n: t.detach().clone() for n, t in e.base_model.named_parameters() if not t.requires_grad},
            "optimizer": e.optimizer.state_dict()}
        state["compression"] = self.compressor.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.compressor.load_state_dict(state.get("compression", {}))
        if self.stage == 0:
            return super().load_state_dict(state)
        e = self.engine
        with torch.no_grad():
            for u, shard in zip(self.units, state["shards"]):
                (u.shard if self.stage == 3 else u.flat[u.lo:u.hi]).copy_(shard)
                if self.stage in (1, 2):
                    C.ring_all_gather(u.flat, self.group, check=False)
            named = dict(e.base_model.named_parameters())
            for n, t in state["frozen"].items():
                named[n].copy_(t)
        e.optimizer.load_state_dict(state["optimizer"])

    def checkpoint_writer(self) -> bool:   # expert parallelism: every rank holds its own experts' state
        return self.stage == 0 and self.ctx.dp_rank == 0 or self.stage > 0 or self.compressor.per_rank_state \
            or self.ctx.ep > 1

    def checkpoint_source_rank(self) -> int:
        if self.stage == 0 and not self.compressor.per_rank_state and self.ctx.ep == 1:
            return super().checkpoint_source_rank()
        return self.ctx.rank

    def memory_bytes(self) -> dict:
        """Bytes this rank holds after a step, by kind (distinct storages; freed ZeRO-3 buffers count 0)."""
        def total(tensors):
            seen = {}
            for t in tensors:
                if t is not None:
                    s = t.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
            return sum(seen.values())
        model, optimizer = self.engine.base_model, self.engine.optimizer
        params = [q for q in model.parameters()] + [u.shard for u in self.units]
        grads = [q.grad for q in model.parameters()] + [u.grad_flat for u in self.units] + \
                [u.grad_shard for u in self.units]
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return {"params": total(params), "grads": total(grads), "optimizer": total(state)}
