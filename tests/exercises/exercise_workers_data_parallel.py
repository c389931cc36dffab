"""Runs on each gloo rank of the graded test of exercise 3.4 (tests/exercises/test_data_parallel.py)."""

from __future__ import annotations

import importlib
import time

from guard import guarded
from recorders import wire_summary

NUMEL, STEPS, LR, MOMENTUM = 14, 3, 0.1, 0.9


def local_grad(step: int, rank: int):
    """The gradient rank `rank` computes at `step` (the test rebuilds them for its single-process oracle)."""
    import torch

    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(100 * step + rank), dtype=torch.float64)


def initial_param():
    import torch

    return torch.linspace(-1, 1, NUMEL, dtype=torch.float64)


def check_zero2(rank: int, world: int, module_name: str) -> dict:
    """Run STEPS ZeRO-2 steps; return params after each step, the final momentum shard and each step's wire
    summary (or the error)."""
    import torch

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "data_parallel")
    param = initial_param()
    shard = torch.zeros_like(torch.tensor_split(param, world)[rank])
    out = {"params": [], "momentum": None, "wire": [], "error": ""}
    try:
        for step in range(STEPS):
            with wire.recording() as log:
                exercise.zero2_sgd_step(param, local_grad(step, rank), shard, LR, MOMENTUM)
            out["params"].append(param.clone())
            out["wire"].append(wire_summary(log))
        out["momentum"] = shard.clone()
    except Exception as e:  # noqa: BLE001 - the test reports it
        out["error"] = f"{type(e).__name__}: {e}"
    return out


# Exercise 3.6: BucketedDDP ------------------------------------------------------------------------------

DDP_SHAPE = (8, 16, 16, 4)                 # Linear 8->16, ReLU, Linear 16->16, ReLU, Linear 16->4
DDP_BATCH, DDP_STEPS, DDP_LR = 8, 3, 0.1
BUCKET_BYTES = 1088                        # -> buckets [b3, w3, b2] 336 B, [w2, b1] 1088 B (exactly full: kept), [w1] 512 B


def ddp_model(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    a, b, c, d = DDP_SHAPE
    return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d))


def ddp_batch(step: int):
    import torch

    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(DDP_BATCH, DDP_SHAPE[0], generator=g), torch.randn(DDP_BATCH, DDP_SHAPE[-1], generator=g)


def check_bucketed_ddp(rank: int, world: int, module_name: str) -> dict:
    """Three SGD steps through the student's BucketedDDP on this rank's half of each batch; each rank's
    model starts from a different seed (the wrapper must broadcast rank 0's). Records the parameters after
    each step, each step's wire summary, the all-reduces launched before the first layer's weight gradient
    existed (overlap) and whether each all-reduce was asynchronous."""
    import torch
    import torch.distributed as dist
    from guard import watching

    from llama_course.core import wire

    wire.install()
    exercise = importlib.import_module(module_name)
    model = ddp_model(seed=rank)
    first_weight = model[0].weight
    launched: list = []                                   # async_op of each all-reduce, in order
    seen_at_first_weight: list = []
    first_weight.register_post_accumulate_grad_hook(lambda p: seen_at_first_weight.append(len(launched)))
    recorded = dist.all_reduce

    def all_reduce(*args, **kwargs):
        launched.append(bool(kwargs.get("async_op", args[3] if len(args) > 3 else False)))
        return recorded(*args, **kwargs)

    out = {"params": [], "wire": [], "before_first_weight": [], "async": [], "error": "", "initial": None}
    try:
        dist.all_reduce = all_reduce
        with watching("data_parallel", "BucketedDDP"):
            ddp = exercise.BucketedDDP(model, BUCKET_BYTES / 2**20)
            out["initial"] = [p.detach().clone() for p in model.parameters()]
            opt = torch.optim.SGD(model.parameters(), lr=DDP_LR)
            half = DDP_BATCH // world
            for step in range(DDP_STEPS):
                x, y = ddp_batch(step)
                x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
                opt.zero_grad()
                launched.clear()
                seen_at_first_weight.clear()
                with wire.recording() as log:
                    loss = ((ddp(x) - y) ** 2).mean()
                    loss.backward()
                    ddp.finish_gradient_synchronization()
                opt.step()
                out["params"].append([p.detach().clone() for p in model.parameters()])
                out["wire"].append(wire_summary(log))
                out["before_first_weight"].append(list(seen_at_first_weight))
                out["async"].append(list(launched))
    except Exception as e:  # noqa: BLE001 - the test reports it
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        dist.all_reduce = recorded
    return out


# Exercise 3.7: fsdp_forward_backward ---------------------------------------------------------------------

FSDP_SHAPES = [(6, 5), (7, 6), (3, 7)]    # (out, in) of each tanh layer; flat sizes 36, 49, 24
FSDP_BATCH = 4                             # sequences per rank


def fsdp_flat_params(world: int) -> list:
    """Each layer's flat parameters (W then b), zero-padded to a multiple of `world`."""
    import torch

    g = torch.Generator().manual_seed(37)
    flats = []
    for out_f, in_f in FSDP_SHAPES:
        n = out_f * in_f + out_f
        flat = torch.zeros(-(-n // world) * world)
        flat[:n] = torch.randn(n, generator=g) * 0.5
        flats.append(flat)
    return flats


def fsdp_data(rank: int):
    import torch

    g = torch.Generator().manual_seed(700 + rank)
    return torch.randn(FSDP_BATCH, FSDP_SHAPES[0][1], generator=g), torch.randn(FSDP_BATCH, FSDP_SHAPES[-1][0], generator=g)


def apply_layer(flat, shape, x):
    """y = tanh(x W^T + b), W and b read from the front of the flat parameters (the padding is ignored)."""
    import torch

    out_f, in_f = shape
    w = flat[:out_f * in_f].view(out_f, in_f)
    b = flat[out_f * in_f:out_f * in_f + out_f]
    return torch.tanh(x @ w.T + b)


def check_fsdp(rank: int, world: int, module_name: str) -> dict:
    """Run the student's FSDP step with spies: every all-gather issued (and how many earlier gathered buffers
    were still alive then), every wait, every layer run (apply_layer)."""
    import weakref

    import torch.distributed as dist
    from guard import watching

    from llama_course.core import wire

    wire.install()
    exercise = importlib.import_module(module_name)
    shards = [flat.chunk(world)[rank].clone() for flat in fsdp_flat_params(world)]
    x, target = fsdp_data(rank)
    events, buffers = [], []                 # buffers: weakrefs to every gathered output

    def count_others(output) -> int:
        ptrs = set()
        for ref in buffers:
            t = ref()
            if t is not None and t.untyped_storage().nbytes() > 0:
                ptrs.add(t.untyped_storage().data_ptr())
        ptrs.discard(output.untyped_storage().data_ptr())
        return len(ptrs)

    def alive_others(output) -> int:
        """Gathered buffers other than `output` still alive. gloo's worker thread may hold a finished
        all-gather's output a moment after wait() returned (a flake on a loaded machine): a buffer the
        student's code still references stays alive however long we wait, so give the runtime up to 0.2 s."""
        for _ in range(200):
            n = count_others(output)
            if n <= 1:
                return n
            time.sleep(0.001)
        return n

    class Waited:
        def __init__(self, work, k):
            self.work, self.k = work, k

        def wait(self, *args, **kwargs):
            events.append(("wait", self.k))
            return self.work.wait(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.work, name)

    def spy(original):
        def gather(output, input, *args, **kwargs):
            k = sum(1 for e in events if e[0] == "gather")
            events.append(("gather", k, alive_others(output)))
            buffers.append(weakref.ref(output))
            work = original(output, input, *args, **kwargs)
            if work is None:
                events.append(("wait", k))
                return None
            return Waited(work, k)
        return gather

    def layer(flat, shape, h):
        events.append(("compute", tuple(shape)))
        return apply_layer(flat, shape, h)

    names = [n for n in ("all_gather_into_tensor", "all_gather_single") if hasattr(dist, n)]
    saved = {n: getattr(dist, n) for n in names}
    out = {"error": ""}
    try:
        for n in names:
            setattr(dist, n, spy(saved[n]))
        with watching("data_parallel", "fsdp_forward_backward"), wire.recording() as log:
            loss, grads = exercise.fsdp_forward_backward(shards, FSDP_SHAPES, x, target, layer)
        out.update(loss=float(loss), grads=[g.detach().clone() for g in grads], events=events,
                   wire=wire_summary(log))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        for n, fn in saved.items():
            setattr(dist, n, fn)
    return out


# Exercise 3.8: clip_grad_norm_sharded --------------------------------------------------------------------

CLIP_SIZES = [(5, 3), (7,), (4, 4)]


def clip_full_grads(case: int) -> list:
    import torch

    g = torch.Generator().manual_seed(800 + case)
    return [torch.randn(*s, generator=g) * (0.1 if case == 1 else 2.0) for s in CLIP_SIZES]


def check_clip(rank: int, world: int, module_name: str, max_norm: float) -> dict:
    """Each rank holds its tensor_split shard of every flattened gradient; two cases, above and below
    max_norm."""
    from guard import guarded

    from llama_course.core import wire

    wire.install()
    exercise = guarded(importlib.import_module(module_name), "data_parallel")
    out = {"norms": [], "shards": [], "wire": [], "error": ""}
    try:
        for case in (0, 1):
            shards = [g.reshape(-1).tensor_split(world)[rank].clone() for g in clip_full_grads(case)]
            with wire.recording() as log:
                norm = exercise.clip_grad_norm_sharded(shards, max_norm)
            out["norms"].append(float(norm))
            out["shards"].append(shards)
            out["wire"].append(wire_summary(log))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    return out
