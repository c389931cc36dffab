"""Parallel 3-D: one training step of a DP x TP x PP layout, composed from the strategy modules.

Ranks are numbered as Megatron-LM does, tensor-parallel fastest, then data, then pipeline:

    rank = tp_index + tp x (dp_index + dp x pp_index)

so a TP group sits inside a node (NVLink), a DP group strides across nodes and a PP group strides
furthest. The step is built in four layers:

  1. compute: each block's forward, backward and recompute time on one GPU (`compute.block_times`)
     plus its TP collectives (`tensor_parallel.tp_comm`) -> seconds of each virtual stage's F and B;
  2. pipeline: the p ranks of one pipeline run their schedule event by event (`pipeline_parallel`),
     with activation sends timed on the cluster graph (scatter/gather over the TP ranks' NICs);
  3. data parallel: each pipeline rank's gradient buckets go through its comm stream as its final
     backward produces them (`data_parallel`), reduced over the DP group on the graph;
  4. the step's scalar all-reduces (loss, gradient norm: `step_scalars`), the optimizer step (memory
     bound), and ZeRO-1/2's all-gather of the new weights.

Symmetric ranks are simulated once: the dp x tp copies of a pipeline rank behave alike, so one pipeline
of p ranks stands for all of them (a 16,384-GPU job is 16 simulated ranks). What differs is simulated
explicitly: every pipeline stage (first and last carry the embedding and the head), the slowest link of
each group (groups are routed on the real graph), and an injected straggler (`faults.slow`), whose
pipeline is simulated beside the nominal one; the step waits for the slowest replica.

    llama-course simulate configs/llama3-405b-h100.yaml --trace step.json
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator import spec
from simulator.collectives import CommModel
from simulator.compute import block_times, embedding_times, head_times, head_weight_grad, optimizer_time
from simulator.context_parallel import cp_comm
from simulator.data_parallel import (
    bucket_ready,
    bucket_sizes,
    buckets_ready,
    compression_factor,
    exposed_gathers,
    grad_bytes_per_param,
    gradient_sync,
    reduce_bucket_mb,
    zero_semantics,
)
from simulator.expert_parallel import ep_comm, local_expert_params, reduced_params, zero_shard_params
from simulator.memory import stage_layers, uses_flash, virtual_stage_params
from simulator.model_compression import weight_bytes_per_param
from simulator.parallel_3d_comm import activation_message_bytes, p2p_time, step_scalars
from simulator.pipeline_parallel import simulate_pipeline
from simulator.streams import simulate_streams, stream_plan
from simulator.tensor_parallel import tp_comm


@dataclass
class Layout:
    """A layout's grid: `dp` counts replicas, the dp x cp ranks that average gradients (spec.py)."""

    tp: int
    dp: int
    pp: int
    vpp: int
    cp: int = 1
    ep: int = 1

    @classmethod
    def of(cls, cfg) -> Layout:
        p = cfg.parallel
        return cls(p.tp, cfg.replicas, p.pp, p.vpp, p.cp, p.ep)

    def rank(self, tp_index: int, dp_index: int, pp_index: int) -> int:
        return spec.rank_of(pp_index, dp_index, tp_index, self.dp, self.tp)

    def tp_group(self, dp_index: int = 0, pp_index: int = 0) -> list:
        return [self.rank(i, dp_index, pp_index) for i in range(self.tp)]

    def dp_group(self, tp_index: int = 0, pp_index: int = 0) -> list:
        return [self.rank(tp_index, i, pp_index) for i in range(self.dp)]

    def pp_group(self, tp_index: int = 0, dp_index: int = 0) -> list:
        return [self.rank(tp_index, dp_index, i) for i in range(self.pp)]

    def consecutive(self, size: int, tp_index: int = 0, group_index: int = 0, pp_index: int = 0) -> list:
        """The group_index-th group of `size` consecutive replicas (spec.consecutive_replicas)."""
        return [self.rank(tp_index, group_index * size + c, pp_index) for c in range(size)]

    def cp_group(self, tp_index: int = 0, data_index: int = 0, pp_index: int = 0) -> list:
        """The cp replicas that share one sequence (context_parallel.py)."""
        return self.consecutive(self.cp, tp_index, data_index, pp_index)

    def ep_group(self, tp_index: int = 0, group_index: int = 0, pp_index: int = 0) -> list:
        """The ep consecutive replicas that split the experts (expert_parallel.py, and its edp_group)."""
        return self.consecutive(self.ep, tp_index, group_index, pp_index)

    def coords(self, rank: int) -> tuple:
        """(tp_index, dp_index, pp_index) of a global rank (simulator/spec.py: the runtime's grid)."""
        pp_index, dp_index, tp_index = spec.coords(rank, self.dp, self.tp, self.pp)
        return tp_index, dp_index, pp_index

    def stage_of(self, rank: int) -> int:
        """The pipeline stage of a global rank."""
        return rank // (self.tp * self.dp)


@dataclass
class StageCost:
    """Seconds of one virtual stage for one micro-batch, split by what they are."""

    compute: float = 0.0
    recompute: float = 0.0
    comm: float = 0.0       # tensor-parallel collectives (exposed)
    gather: float = 0.0     # ZeRO-3 / FSDP weight gathers left exposed (`exposed_gathers`, alone)
    weight_grad: float = 0.0  # of a backward's compute, the weight gradient (zero bubble's W task)

    @property
    def total(self) -> float:
        return self.compute + self.recompute + self.comm + self.gather


@dataclass
class Step:
    """Everything one simulated step produced; `simulate.py` turns it into the JSON fields."""

    step_time: float
    breakdown: dict
    comm: dict
    critical_rank: int
    pipeline: object
    forward: list
    backward: list
    dp_spans: dict = field(default_factory=dict)     # pipeline rank -> [(start, end)] of gradient collectives
    optimizer_spans: dict = field(default_factory=dict)
    recompute_flops_per_token: float = 0.0
    mean_shift: dict = field(default_factory=dict)   # mean over pipeline ranks of each component - breakdown's
    layers: list = field(default_factory=list)


def stage_costs(cfg, hw, comm: CommModel, layout: Layout, layers: list, system: str | None = None) -> tuple:
    """(forward, backward) StageCost per virtual stage, for one micro-batch."""
    p, prec, m = cfg.parallel, cfg.training.precision, cfg.model
    b, s = p.micro_batch_size, cfg.seq_len
    blk = block_times(m, s, b, p.tp, p.sequence_parallel, prec, uses_flash(cfg), p.activation_checkpointing, hw,
                      cfg.training.fp8, p.cp, p.ep)
    tpc, cpc = tp_comm(cfg, comm, layout.tp_group()), cp_comm(cfg, comm, layout.cp_group())
    block_f, block_b = tpc.block_forward + cpc.block_forward, tpc.block_backward + cpc.block_backward
    epc = ep_comm(cfg, comm, layout.ep_group())                 # the experts' dispatch and combine
    block_f, block_b = epc.add(block_f, block_b)
    # recomputation reruns the block's collectives (full) or the K/V gather inside the attention it reruns and
    # the all-to-alls (selective modes keep only matmul outputs: the course's checkpoint reruns the exchanges)
    re_comm = {"none": 0.0, "full": block_f}.get(p.activation_checkpointing, epc.add(cpc.block_forward, 0.0)[0])
    s_local = s // p.cp                         # the tokens of this GPU (context_parallel.py)
    emb_f, emb_b = embedding_times(m, s_local, b, p.tp, prec, hw)
    head_f, head_b = head_times(m, s_local, b, p.tp, prec, hw)
    sem = zero_semantics(cfg, system)
    gather = 0.0
    if sem.gather in ("first_forward", "forward", "forward_backward"):
        # weights all-gathered block by block in every micro-batch's forward (and, ZeRO-3, again before its
        # backward): prefetched one block ahead (FSDP2, DeepSpeed) or just in time (the course's hooks)
        psi_block = virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]
        gather = sem.comm_slowdown * comm.time("all_gather", layout.dp_group(), psi_block * weight_bytes_per_param(cfg))

    def gathers(n_blocks, compute, when):
        return exposed_gathers(n_blocks, compute, gather, sem.prefetch) if sem.gather in when else 0.0

    n_virtual = len(layers)
    fwd, bwd = [], []
    for k, n_blocks in enumerate(layers):
        f = StageCost(n_blocks * blk.forward, 0.0, n_blocks * block_f,
                      gathers(n_blocks, blk.forward, ("forward", "forward_backward")))
        g = StageCost(n_blocks * blk.backward, n_blocks * blk.recompute, n_blocks * (block_b + re_comm),
                      gathers(n_blocks, blk.backward + blk.recompute, ("forward_backward",)),
                      n_blocks * blk.weight_grad)
        if k == 0:
            f.compute += emb_f
            f.comm += tpc.embedding_forward
            g.compute += emb_b
        if k == n_virtual - 1:
            f.compute += head_f
            f.comm += tpc.head_forward
            g.compute += head_b
            g.weight_grad += head_weight_grad(m, s_local, b, p.tp, prec, hw)
            g.comm += tpc.head_backward
        fwd.append(f)
        bwd.append(g)
    return fwd, bwd, blk, gather


def chunk_tensors(cfg, layers: list) -> list:
    """Elements of each parameter tensor of every virtual stage on one tp rank (simulator/spec.py, from the
    model definition), in registration order: the runtime's bucket plan and the optimizer's tensor count."""
    n_virtual = len(layers)
    return [spec.stage_tensor_numels(cfg.model, cfg.seq_len, n, k == 0, k == n_virtual - 1, cfg.parallel.tp)
            for k, n in enumerate(layers)]


def _bucket_cap(cfg, sem) -> float:
    psi_block = virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]
    return reduce_bucket_mb(cfg, sem, psi_block)


def grad_buckets(cfg, sem, layers: list, psi_virtual: list, grad_wire: float) -> list:
    """Bytes on the wire of each gradient bucket of every virtual stage, in the order backward fills them:
    the runtime's plan over the chunk's tensors (`chunk_tensors`, `data_parallel.bucket_sizes`) at the
    system's cap (`data_parallel.reduce_bucket_mb`), scaled from fp32 buffers to the bytes reduced."""
    cap, out = _bucket_cap(cfg, sem), []
    for k, numels in enumerate(chunk_tensors(cfg, layers)):
        plan = bucket_sizes(numels, cap)
        out.append([b * psi_virtual[k] * grad_wire / sum(plan) for b in plan])
    return out


def grad_bucket_ready(cfg, sem, layers: list) -> list:
    """For each of `grad_buckets`' buckets, the fraction of its chunk's backward after which it is ready
    (`data_parallel.bucket_ready`: by the backward work its tensors wait for, not by their bytes)."""
    cap, n_virtual, tp = _bucket_cap(cfg, sem), len(layers), cfg.parallel.tp
    return [bucket_ready(numels, cap, spec.stage_tensor_backward_work(cfg.model, cfg.seq_len, n, k == 0,
                                                                      k == n_virtual - 1, tp))
            for k, (n, numels) in enumerate(zip(layers, chunk_tensors(cfg, layers)))]


def optimizer_and_gather(cfg, hw, comm: CommModel, layout: Layout, layers: list, r: int, sem, block_forward: float,
                         block_gather: float, in_tasks: bool = False) -> tuple:
    """(optimizer seconds, exposed weight all-gather seconds) of pipeline rank r after its gradients are
    reduced: the optimizer steps its shard (ZeRO-1+), then the new weights are gathered after it (course,
    DeepSpeed ZeRO-1/2: nothing to hide behind) or block by block, prefetched, in the first micro-batch
    (FSDP2's ZeRO-1/2 under a pipeline; `in_tasks`: the streams simulate those, none is added here)."""
    p = cfg.parallel
    psi_virtual = virtual_stage_params(cfg, layers)
    psi_r = sum(psi_virtual[c * p.pp + r] for c in range(p.vpp))
    blocks_r = sum(layers[c * p.pp + r] for c in range(p.vpp))
    n_virtual = len(layers)
    # parameter tensors of the rank's chunks: its blocks' and, on the first and last chunk, the embedding's,
    # the final norm's and the head's (spec.py, from the model definition)
    ends = sum(len(spec.stage_tensor_numels(cfg.model, cfg.seq_len, 0, k == 0, k == n_virtual - 1, p.tp))
               for k in (c * p.pp + r for c in range(p.vpp)) if k in (0, n_virtual - 1))
    tensors = blocks_r * len(spec.block_parameters(cfg.model)) + ends
    psi_shard = zero_shard_params(psi_r, local_expert_params(cfg.model, blocks_r, p.ep, p.tp), layout.dp, p.ep)
    opt = optimizer_time(psi_shard if p.zero_stage >= 1 else psi_r, cfg.training.precision,
                         cfg.training.optimizer, hw, tensors=tensors)
    gather = 0.0
    if sem.gather == "after_step":
        gather = comm.time("all_gather", layout.dp_group(), psi_r * weight_bytes_per_param(cfg))
    elif sem.gather == "first_forward" and not in_tasks:
        gather = exposed_gathers(blocks_r, block_forward, block_gather, sem.prefetch)
    return opt, gather


def step_lower_bound(cfg, hw, comm: CommModel, system: str | None = None) -> float:
    """Seconds no simulation of this layout can beat, without simulating it: for every pipeline rank r, its
    m micro-batches of forward and backward (compute, recompute and the exposed tensor-parallel and ZeRO
    collectives of its stage costs) plus the least it must idle, r x the lightest virtual stage's forward +
    backward (with equal stages the last rank's is the classic (p - 1)(F + B) bubble); then what follows
    the last backward on the lightest rank (step scalars, the optimizer, a gather after it). Gradient sync,
    sends, stragglers and imbalance only add."""
    p = cfg.parallel
    layout = Layout.of(cfg)
    layers = stage_layers(cfg)
    sem = zero_semantics(cfg, system)
    fwd, bwd, blk, block_gather = stage_costs(cfg, hw, comm, layout, layers, system)
    per_rank = [sum(fwd[c * p.pp + r].total + bwd[c * p.pp + r].total for c in range(p.vpp)) for r in range(p.pp)]
    # rank r waits for micro-batch 0's forward through the r stages before it, and after its last backward
    # the r stages before it each run one more backward: at least r (F + B) of the lightest virtual stage
    hop = min(f.total for f in fwd) + min(b.total for b in bwd)
    if p.schedule == "zero_bubble":     # its W fills the tail: only the wait for the first forward is certain
        hop = min(f.total for f in fwd)
    makespan = max(cfg.grad_accum_steps * work + r * hop for r, work in enumerate(per_rank))
    # the rank that ends the pipeline pays its own tail; the lightest is rank 0, p - 2 (the middle ranks
    # never hold more than the one before) or p - 1
    tail = min(sum(optimizer_and_gather(cfg, hw, comm, layout, layers, r, sem, blk.forward, block_gather))
               for r in {0, max(0, p.pp - 2), p.pp - 1})
    return makespan + step_scalars(cfg, comm, layout) + tail


def on_links(hw) -> bool:
    """Whether the step runs on the cluster's links with contention (`streams`): every GPU. A `cpu` profile's
    collectives are gloo's measured curves, so there it is the pipeline, then each rank's buckets alone."""
    return hw.sm_count is not None and hw.collective_table is None


def simulate_step(cfg, hw, comm: CommModel, record: bool = False, system: str | None = None,
                  contention: bool | None = None) -> Step:
    """One step of the config's layout; `system` picks the data-parallel rules (data_parallel.zero_semantics);
    `contention` (default: `on_links(hw)`) runs every rank's streams on shared links (`streams`)."""
    p = cfg.parallel
    layout = Layout.of(cfg)
    n_micro = cfg.grad_accum_steps
    layers = stage_layers(cfg)
    sem = zero_semantics(cfg, system)
    fwd, bwd, blk, block_gather = stage_costs(cfg, hw, comm, layout, layers, system)
    send = p2p_time(cfg, comm, layout)
    contention = on_links(hw) if contention is None else contention

    # stragglers: a slowed rank slows its pipeline rank in one replica; simulate that replica too
    slow_by_stage: dict = {}
    for rank, factor in (cfg.faults.slow or {}).items():
        if rank < layout.tp * layout.dp * layout.pp:
            stage = layout.coords(rank)[2]
            slow_by_stage[stage] = max(slow_by_stage.get(stage, 1.0), float(factor))
    psi_virtual = reduced_params(cfg, layers, virtual_stage_params(cfg, layers))    # experts: over the edp group
    grad_wire = grad_bytes_per_param(cfg) * compression_factor(cfg)
    scalars = step_scalars(cfg, comm, layout)
    slows = [{}] + ([slow_by_stage] if slow_by_stage else [])
    buckets = grad_buckets(cfg, sem, layers, psi_virtual, grad_wire) if layout.dp > 1 else [[] for _ in layers]
    ready_at = grad_bucket_ready(cfg, sem, layers) if layout.dp > 1 else [[] for _ in layers]
    if contention:
        plan = stream_plan(cfg, layout, layers, fwd, bwd, sem, psi_virtual, grad_wire, buckets, ready_at)
        a = activation_message_bytes(cfg)
        extra = comm.time("all_gather", layout.tp_group(), a) if layout.tp > 1 and not p.sequence_parallel else 0.0
        runs = [simulate_streams(plan, comm, layout, a / layout.tp if layout.pp > 1 else 0.0, extra, slow, record)
                for slow in slows]
    else:
        fwd_t, bwd_t, wgrad_t = [c.total for c in fwd], [c.total for c in bwd], [c.weight_grad for c in bwd]
        sharing = None
        if hw.cores and layout.pp > 1 and all(c.comm == 0 and c.gather == 0 for c in fwd + bwd):
            # on a CPU the stages share the machine's cores: priced alone, stretched by how many compute at once
            # (each stage's dp x tp copies with it); compute_slowdown assumed all of them at once
            copies, full = layout.dp * layout.tp, hw.sharing_slowdown(cfg.cluster.num_gpus)
            fwd_t, bwd_t, wgrad_t = [t / full for t in fwd_t], [t / full for t in bwd_t], [t / full for t in wgrad_t]
            sharing = lambda k: hw.sharing_slowdown(k * copies)  # noqa: E731
        runs = [simulate_pipeline(p.schedule, p.pp, n_micro, p.vpp, fwd_t, bwd_t, send, slow=slow, record=record,
                                  sharing=sharing, weight_grad=wgrad_t)
                for slow in slows]

    # data-parallel gradient sync per pipeline rank (unless the streams ran it), then the optimizer
    dp_group = layout.dp_group()
    # ZeRO-2/3 (and torch's ZeRO-1, which is FSDP2's ZeRO-2) reduce-scatter the gradients; the course's
    # ZeRO-1 all-reduces them, then each rank updates its shard (data_parallel.zero_semantics)
    kind = sem.grad_collective
    best = None
    all_spans, ends = {}, {}
    for i, run in enumerate(runs):
        for r in range(p.pp):
            if contention:
                dp_end, dp_busy, spans = run.dp_end[r], run.dp_busy[r], run.dp_spans.get(r, [])
            else:
                ready = []
                for c in range(p.vpp):
                    k = c * p.pp + r
                    if layout.dp == 1:
                        continue
                    # the system's buckets over this chunk's tensors, after the last backward (or after
                    # every micro-batch's, for systems that reduce each one)
                    backs = run.backward_spans[(r, c)] if sem.reduce_every_micro_batch else [run.last_backward[(r, c)]]
                    for span in backs:
                        ready += buckets_ready(span, buckets[k], ready_at[k])
                ready.sort()
                dp_end, dp_busy, spans = gradient_sync(
                    ready, p.overlap and p.bucket_mb > 0,
                    lambda n, chained: sem.comm_slowdown * comm.time(kind, dp_group, n, back_to_back=chained),
                    run.compute_end[r])
            opt, gather = optimizer_and_gather(cfg, hw, comm, layout, layers, r, sem, blk.forward, block_gather,
                                               in_tasks=contention)
            end = dp_end + scalars + opt + gather
            all_spans[(i, r)] = (spans, (dp_end + scalars, dp_end + scalars + opt), (dp_end + scalars + opt, end))
            ends[(i, r)] = (end, dp_end, dp_busy, opt, gather)
            if best is None or end > best[0]:
                best = (end, r, i)
    end, r, i = best

    def rank_parts(q: int) -> tuple:
        """Pipeline rank q's components in replica i (they add up to its own end) and its comm detail."""
        run, factor = runs[i], slows[i].get(q, 1.0)
        _, dp_end, dp_busy, opt, gather = ends[(i, q)]
        chunks = [c * p.pp + q for c in range(p.vpp)]
        compute = factor * n_micro * sum(fwd[k].compute + bwd[k].compute for k in chunks)
        recompute = factor * n_micro * sum(bwd[k].recompute for k in chunks)
        if not contention and compute + recompute > 0:     # as run: shared cores may have stretched it otherwise
            shared = run.busy[q] / (factor * n_micro * sum(fwd[k].total + bwd[k].total for k in chunks))
            if abs(shared - 1) > 1e-9:
                compute, recompute = compute * shared, recompute * shared
        tp_exposed = factor * n_micro * sum(fwd[k].comm + bwd[k].comm for k in chunks)
        if contention:      # gathers and sends waited for, compute slowed by communication beside it, as simulated
            gathers, slowdown, sends = run.gather_wait[q], run.slowdown[q], run.send_wait[q]
        else:
            gathers, slowdown, sends = factor * n_micro * sum(fwd[k].gather + bwd[k].gather for k in chunks), 0.0, 0.0
        bubble = max(0.0, run.compute_end[q] - compute - recompute - tp_exposed - gathers - slowdown - sends)
        dp_exposed = max(0.0, dp_end - run.compute_end[q])
        parts = {"compute": compute, "recompute": recompute,
                 "exposed_comm": tp_exposed + gathers + slowdown + sends + dp_exposed + scalars + gather,
                 "bubble": bubble, "optimizer": opt}
        return parts, {"tp_exposed": tp_exposed, "dp_exposed": dp_exposed, "dp_total": dp_busy, "zero_gather": gather,
                       "gather_wait": gathers, "pp_send": send, "send_wait": sends, "step_scalars": scalars,
                       "overlap_slowdown": slowdown}

    ranks = [rank_parts(q) for q in range(p.pp)]
    breakdown, comm_detail = ranks[r]
    # every pipeline rank's components, averaged, less the critical rank's: what a per-rank average reads
    # beside `breakdown` (a trace averaged over ranks, as `compare` measures); zero without pipelining. A rank
    # that ends early waits for the next step's first message (bubble)
    idle = sum(end - ends[(i, q)][0] for q in range(p.pp))
    mean_shift = {c: (sum(parts[c] for parts, _ in ranks) + (idle if c == "bubble" else 0.0)) / p.pp - v
                  for c, v in breakdown.items()}
    recompute_per_token = cfg.model.n_layers * blk.recompute_flops * p.tp * p.cp / (p.micro_batch_size * cfg.seq_len)
    return Step(step_time=end, breakdown=breakdown, comm=comm_detail, critical_rank=r, pipeline=runs[i],
                forward=fwd, backward=bwd,
                dp_spans={rr: v[0] for (ii, rr), v in all_spans.items() if ii == i},
                optimizer_spans={rr: v[1:] for (ii, rr), v in all_spans.items() if ii == i},
                recompute_flops_per_token=recompute_per_token, layers=layers, mean_shift=mean_shift)
