"""Measured bytes per rank of parameters, gradients and optimizer state under ZeRO-0..3 (the course's
data-parallel engines) against the simulator's memory model (`simulator.workload.state_bytes`).

    .venv/bin/python benchmarks/zero_memory.py            # prints a markdown table, 2 and 4 processes

Each rank builds the engine for the `small` LLaMA (fp32, AdamW), takes one optimizer step (so gradients
and optimizer state exist) and reports `engine.sync.memory_bytes()`: the bytes of the tensors it holds.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simulator.cli_args import Parser  # noqa: E402

STAGES = {0: "bucketed", 1: "zero1", 2: "zero2", 3: "zero3"}


def config(world: int, stage: int):
    from simulator.config import load_config

    return load_config({"model": {"preset": "small"}, "seq_len": 64, "cluster": {"gpu": "cpu", "num_gpus": world},
                        "parallel": {"micro_batch_size": 1, "global_batch_size": world, "zero_stage": stage,
                                     "implementation": "course"},
                        "training": {"precision": "fp32", "optimizer": "adamw"}})


def worker(rank: int, world: int) -> dict:
    from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    ctx = init_distributed(world, 1, 1)
    out = {}
    for stage in STAGES:
        cfg = config(world, stage)
        seqs = pack(load_tokens(cfg).train, cfg.seq_len)
        idx = BatchSampler(len(seqs), cfg.parallel.global_batch_size, 0).shard(0, ctx.dp_rank, ctx.dp, 1)
        engine = build_engine(cfg, ctx, build_model(cfg), None)
        engine.train_step([get_batch(seqs, i) for i in idx], 1e-4)
        out[stage] = engine.sync.memory_bytes()
    return out


def main(argv=None) -> int:
    Parser(description=__doc__.split("\n")[0]).parse_args(argv)      # no options: --help, or a mistake refused
    from llama_course.core.testing import spawn
    from simulator.workload import count_params, state_bytes

    print("| processes | ZeRO stage | kind | measured (rank 0) | simulator | measured / simulator |")
    print("|---:|---:|---|---:|---:|---:|")
    for world in (2, 4):
        measured = spawn(worker, world, timeout=600)[0]
        for stage in STAGES:
            cfg = config(world, stage)
            predicted = state_bytes(count_params(cfg.model), "fp32", "adamw", stage, world)
            for kind in ("params", "grads", "optimizer"):
                m, p = measured[stage][kind], predicted[kind]
                print(f"| {world} | {stage} | {kind} | {m / 2**20:.2f} MiB | {p / 2**20:.2f} MiB | {m / p:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
