"""Tokens/s of every data-parallel implementation, side by side in one run on the same config.

    python benchmarks/data_parallel.py --nproc 2 --nproc 4          # markdown tables
    python benchmarks/data_parallel.py --nproc 2 --preset tiny --steps 3

Each process count is one launch: the ranks build every engine in turn (course: naive, bucketed +
overlapped, ZeRO-1/2/3; torch: DDP, FSDP2) on the same model, data and global batch, and time optimizer
steps in interleaved rounds (round r runs every engine once), so slow phases of a shared machine hit
every engine alike. Reported per engine: median step time, tokens/s, the forward+backward time, the
time the step then still waits for gradients (exposed communication: `all_reduce` span of
engine.train_step), the optimizer (+ parameter all-gather for ZeRO-1/2), and bytes sent per rank.
"""

from __future__ import annotations

import statistics
import time

from simulator.cli_args import Parser

ENGINES = {
    "naive (course)": {"bucket_mb": 0},
    "bucketed+overlap (course)": {"bucket_mb": 25, "overlap": True},
    "zero1 (course)": {"zero_stage": 1, "bucket_mb": 25},
    "zero2 (course)": {"zero_stage": 2, "bucket_mb": 25},
    "zero3 (course)": {"zero_stage": 3},
    "ddp (torch)": {"implementation": "torch", "bucket_mb": 25},
    "fsdp2 (torch)": {"implementation": "torch", "zero_stage": 3},
}


def config(n: int, preset: str, seq_len: int, micro: int, accum: int, parallel: dict):
    from simulator.config import load_config

    return load_config({"model": {"preset": preset}, "seq_len": seq_len, "cluster": {"gpu": "cpu", "num_gpus": n},
                        "parallel": {"micro_batch_size": micro, "global_batch_size": micro * accum * n, **parallel},
                        "training": {"precision": "fp32", "optimizer": "adamw", "lr": 1e-4, "grad_clip": 1.0}})


def worker(rank: int, world: int, preset: str, seq_len: int, micro: int, accum: int, rounds: int) -> dict:
    import torch.distributed as dist

    from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model, num_params
    from llama_course.core.profiling import Tracer
    from llama_course.engine import build_engine

    ctx = init_distributed(world, 1, 1)
    cfgs = {name: config(world, preset, seq_len, micro, accum, p) for name, p in ENGINES.items()}
    any_cfg = next(iter(cfgs.values()))
    seqs = pack(load_tokens(any_cfg).train, seq_len)
    sampler = BatchSampler(len(seqs), any_cfg.parallel.global_batch_size, 0)
    engines, stats = {}, {name: [] for name in ENGINES}
    for name, cfg in cfgs.items():
        engines[name] = build_engine(cfg, ctx, build_model(cfg), Tracer(enabled=True, rank=rank))
    params = num_params(build_model(any_cfg))
    import random

    order = list(engines)
    for r in range(rounds + 1):                      # round 0 warms up every engine
        random.Random(r).shuffle(order)             # same order on every rank, a new one each round
        for name in order:
            engine = engines[name]
            batches = [get_batch(seqs, i) for i in sampler.shard(r, ctx.dp_rank, world, micro)]
            engine.tracer.clear()
            dist.barrier()
            t0 = time.perf_counter()
            out = engine.train_step(batches, 1e-4)
            dt = time.perf_counter() - t0
            spans = engine.tracer.totals()
            if r:
                stats[name].append({"step": dt, "compute": spans.get("forward", 0) + spans.get("backward", 0),
                                    "exposed": spans.get("all_reduce", 0),
                                    "optimizer": spans.get("optimizer", 0), "bytes": out.get("bytes_sent")})
    summary = {}
    for name, rows in stats.items():
        summary[name] = {k: statistics.median(x[k] for x in rows) for k in ("step", "compute", "exposed", "optimizer")}
        summary[name]["bytes"] = rows[-1]["bytes"]
        # speed relative to DDP within each round (the same minute of a shared machine), median over rounds
        summary[name]["vs_ddp"] = statistics.median(d["step"] / x["step"] for x, d in zip(rows, stats["ddp (torch)"]))
    return {"summary": summary, "params": params, "tokens": any_cfg.tokens_per_step}


def main() -> None:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, action="append", help="processes (repeatable; default 2 and 4)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro", type=int, default=2, help="micro-batch size (sequences)")
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per rank per step")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from llama_course.core.testing import spawn

    for n in args.nproc or [2, 4]:
        t0 = time.time()
        res = spawn(worker, n, args.preset, args.seq_len, args.micro, args.accum, args.rounds, timeout=900)[0]
        s, tokens = res["summary"], res["tokens"]
        print(f"\n### {n} processes: {args.preset} ({res['params'] / 1e6:.1f}M params, fp32 grads "
              f"{res['params'] * 4 / 2**20:.0f} MiB), {tokens} tokens/step, median of {args.rounds} "
              f"({time.time() - t0:.0f} s)\n")
        print("| engine | step | tokens/s | vs DDP (per round) | fwd+bwd | exposed comm | optimizer (+gather) | MB sent/rank |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, x in s.items():
            mb = "-" if x["bytes"] is None else f"{x['bytes'] / 2**20:.1f}"
            print(f"| {name} | {x['step'] * 1e3:.0f} ms | {tokens / x['step']:,.0f} | {x['vs_ddp']:.2f} "
                  f"| {x['compute'] * 1e3:.0f} ms | {x['exposed'] * 1e3:.0f} ms | {x['optimizer'] * 1e3:.0f} ms | {mb} |")


if __name__ == "__main__":
    main()
