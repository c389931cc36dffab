"""Spawned workers for tests/test_collectives.py (importable by name, as llama_course.core.testing.spawn needs)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from llama_course.parallel import collectives as C

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int32, torch.int64]
SIZES = [1, 7, 33, 1001, 4099]


def _data(size, dtype, rank, seed):
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype.is_floating_point:
        return torch.randn(size, generator=g).to(dtype)
    return torch.randint(-50, 50, (size,), generator=g).to(dtype)


def _tol(dtype):
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-6 if dtype.is_floating_point else 0)


def _close(a, b, dtype):
    tol = _tol(dtype)
    if tol == 0:
        return torch.equal(a, b)
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * 4)


def check_all(rank: int, world: int) -> list:
    """Run every collective against torch.distributed's on the world and on a sub-group; return failures."""
    failures = []
    groups = [None]
    if world == 4:   # groups of ranks {1, 3} and {0, 1, 3}: global peers differ from group ranks
        sub = dist.new_group([1, 3])
        groups.append(sub if rank in (1, 3) else "skip")
        sub3 = dist.new_group([0, 1, 3])       # 3 ranks: halving-doubling folds rank 3 (group rank 2) in
        groups.append(sub3 if rank in (0, 1, 3) else "skip")
    seed = 0
    for group in groups:
        if group == "skip":
            continue
        n = dist.get_world_size(group)
        me = dist.get_rank(group)
        for dtype in DTYPES:
            for size in SIZES:
                seed += 1
                x = _data(size, dtype, dist.get_rank(), seed)
                ref = x.clone()
                dist.all_reduce(ref, group=group)
                for name, fn in (("ring", C.ring_all_reduce), ("halving_doubling", C.halving_doubling_all_reduce)):
                    got = fn(x.clone(), group=group)
                    if not _close(got, ref, dtype):
                        failures.append(f"{name} all_reduce {dtype} n={size} N={n}")
                # reduce-scatter: this rank's chunk of the all-reduce
                lo, hi = C.chunk_range(size, n, me)
                got = C.ring_reduce_scatter(x.clone(), group=group)
                if not _close(got, ref[lo:hi], dtype):
                    failures.append(f"reduce_scatter {dtype} n={size} N={n}")
                # all-gather of uneven shards vs the concatenation of everyone's data (all_gather of full x)
                full = [torch.empty_like(x) for _ in range(n)]
                dist.all_gather(full, x, group=group)
                expect = torch.cat([f[slice(*C.chunk_range(size, n, i))] for i, f in enumerate(full)])
                got = C.all_gather_into(torch.zeros_like(x), x[lo:hi], group=group)
                if not torch.equal(got, expect):
                    failures.append(f"all_gather {dtype} n={size} N={n}")
                # broadcast from the last rank
                src = n - 1
                ref_b = x.clone()
                dist.broadcast(ref_b, src=C._global(group, src), group=group)
                got = C.tree_broadcast(x.clone(), src=src, group=group)
                if not torch.equal(got, ref_b):
                    failures.append(f"broadcast {dtype} n={size} N={n}")
        # divisible sizes: reduce_scatter against torch's own, avg/max ops, non-contiguous input
        x = _data(8 * n, torch.float32, dist.get_rank(), 99)
        ref = torch.empty(8)
        dist.reduce_scatter_tensor(ref, x.clone(), group=group)
        if not torch.allclose(C.ring_reduce_scatter(x.clone(), group=group), ref, atol=1e-6):
            failures.append("reduce_scatter vs reduce_scatter_tensor")
        for op, dop in (("max", dist.ReduceOp.MAX), ("min", dist.ReduceOp.MIN)):
            ref = x.clone()
            dist.all_reduce(ref, op=dop, group=group)
            if not torch.equal(C.ring_all_reduce(x.clone(), group=group, op=op), ref):
                failures.append(f"ring op={op}")
        ref = x.clone()
        dist.all_reduce(ref, group=group)
        if not torch.allclose(C.ring_all_reduce(x.clone(), group=group, op="avg"), ref / n, atol=1e-6):
            failures.append("ring op=avg")
        m = _data(6 * 5, torch.float32, dist.get_rank(), 7).view(6, 5).t()      # non-contiguous
        ref = m.contiguous()
        dist.all_reduce(ref, group=group)
        if not torch.allclose(C.ring_all_reduce(m, group=group), ref, atol=1e-6):
            failures.append("ring non-contiguous")
        # wire bytes: the ring sends 2(N-1)/N n e
        counter = C.WireCounter()
        C.ring_all_reduce(torch.ones(1000), group=group, counter=counter, check=False)
        if counter.sent != C.ring_bytes_per_rank("all_reduce", 1000, 4, n) and 1000 % n == 0:
            failures.append(f"bytes {counter.sent}")
        # peers that disagree on sizes or dtypes: every rank raises, nobody hangs
        for fn in (C.ring_all_reduce, C.halving_doubling_all_reduce, C.tree_broadcast):
            bad = torch.ones(10 + (me == n - 1))
            try:
                fn(bad, group=group)
                failures.append(f"{fn.__name__} accepted mismatched sizes")
            except C.CollectiveMismatchError as e:
                if "disagree" not in str(e):
                    failures.append(f"unclear error {e}")
        try:
            C.ring_all_reduce(torch.ones(4, dtype=torch.float32 if me else torch.float64), group=group)
            failures.append("accepted mismatched dtypes")
        except C.CollectiveMismatchError:
            pass
    return failures


def strict_rings(rank: int, world: int) -> dict:
    """The course's collectives under strict mode (NCCL's rules on gloo), recorded: results against
    torch.distributed's, and the operations they posted."""
    from llama_course.core import wire

    wire.set_strict(True)
    x = _data(1001, torch.float32, rank, 5)
    ref = x.clone()
    dist.all_reduce(ref)
    out, ops = {}, {}
    for name, fn in (("ring", C.ring_all_reduce), ("halving_doubling", C.halving_doubling_all_reduce)):
        with wire.recording() as log:
            out[name] = bool(torch.allclose(fn(x.clone()), ref, atol=1e-5))
        ops[name] = sorted({c.op for c in log.calls})
    lo, hi = C.chunk_range(1001, world, rank)
    out["reduce_scatter"] = bool(torch.allclose(C.ring_reduce_scatter(x.clone()), ref[lo:hi], atol=1e-5))
    full = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(full, x)
    expect = torch.cat([f[slice(*C.chunk_range(1001, world, i))] for i, f in enumerate(full)])
    out["all_gather"] = bool(torch.equal(C.all_gather_into(torch.zeros_like(x), x[lo:hi]), expect))
    ref_b = x.clone()
    dist.broadcast(ref_b, src=world - 1)
    out["broadcast"] = bool(torch.equal(C.tree_broadcast(x.clone(), src=world - 1), ref_b))
    return {"ok": out, "ops": ops}
