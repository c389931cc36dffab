"""All-reduce bandwidth of the course's ring and halving-doubling against gloo's built-in, in one run.

    python benchmarks/collectives.py --nproc 2 --nproc 4          # 1 KB .. 64 MB, markdown table
    python benchmarks/collectives.py --nproc 2 --max-mb 4 --iters 5

nccl-tests conventions: algbw = bytes / time, busbw = algbw x 2(N-1)/N (the bytes each link really
carries in a bandwidth-optimal all-reduce), time = median over iterations after a warm-up. Sizes are
fp32 tensors. Each size runs every algorithm back to back, so they see the same machine load.
"""

from __future__ import annotations

import statistics
import time

from simulator.cli_args import Parser

ALGORITHMS = ("gloo", "ring", "halving_doubling")


def worker(rank: int, world: int, sizes: list, iters: int) -> list:
    import torch
    import torch.distributed as dist

    from llama_course.parallel import collectives as C

    run = {"gloo": lambda t: dist.all_reduce(t),
           "ring": lambda t: C.ring_all_reduce(t, check=False),
           "halving_doubling": lambda t: C.halving_doubling_all_reduce(t, check=False)}
    rows = []
    for nbytes in sizes:
        x = torch.ones(max(nbytes // 4, 1))
        times = {a: [] for a in ALGORITHMS}
        for it in range(iters + 1):
            for a in ALGORITHMS:
                dist.barrier()
                t0 = time.perf_counter()
                run[a](x)
                dt = time.perf_counter() - t0
                if it:                                      # iteration 0 warms up
                    times[a].append(dt)
        t = torch.tensor([statistics.median(times[a]) for a in ALGORITHMS], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)          # the slowest rank sets the time
        rows.append((nbytes, t.tolist()))
    return rows


def human(nbytes: int) -> str:
    for unit, div in (("MB", 2**20), ("KB", 2**10)):
        if nbytes >= div:
            return f"{nbytes // div} {unit}"
    return f"{nbytes} B"


def main() -> None:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, action="append", help="processes (repeatable; default 2 and 4)")
    ap.add_argument("--min-kb", type=float, default=1)
    ap.add_argument("--max-mb", type=float, default=64)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    from llama_course.core.testing import spawn

    sizes, s = [], int(args.min_kb * 1024)
    while s <= args.max_mb * 2**20:
        sizes.append(s)
        s *= 4
    for n in args.nproc or [2, 4]:
        rows = spawn(worker, n, sizes, args.iters, timeout=900)[0]
        bus = 2 * (n - 1) / n
        print(f"\n### {n} processes (gloo, CPU, fp32; median of {args.iters})\n")
        print("| size | gloo time | gloo busbw | ring time | ring busbw | ring / gloo | halving-doubling time | h-d busbw |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for nbytes, (tg, tr, th) in rows:
            def bw(t, nbytes=nbytes, bus=bus):      # busbw GB/s
                return nbytes / t * bus / 1e9
            print(f"| {human(nbytes)} | {tg * 1e3:.3f} ms | {bw(tg):.3f} GB/s | {tr * 1e3:.3f} ms | {bw(tr):.3f} GB/s "
                  f"| {tg / tr:.2f} | {th * 1e3:.3f} ms | {bw(th):.3f} GB/s |")


if __name__ == "__main__":
    main()
