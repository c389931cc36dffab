"""Loss curves and bytes on the wire of every gradient compression, in one run on the built-in corpus.

    python benchmarks/communication_compression.py --nproc 2 --steps 60

The tiny LLaMA (configs/tiny.yaml: seq 128, global batch 16, AdamW, warmup + cosine) trains with the
course's bucketed data-parallel engine under parallel.compression = none | fp16 | bf16 | topk | powersgd,
same seed and data; prints the training loss every few steps and the bytes each rank sent per step.
"""

from __future__ import annotations

from simulator.cli_args import Parser

METHODS = {"none": {}, "fp16": {}, "bf16": {}, "topk (1%)": {"compression": "topk", "topk_ratio": 0.01},
           "topk (10%)": {"compression": "topk", "topk_ratio": 0.1},
           "powersgd (r=1)": {"compression": "powersgd", "powersgd_rank": 1},
           "powersgd (r=4)": {"compression": "powersgd", "powersgd_rank": 4}}


def worker(rank: int, world: int, steps: int) -> dict:
    from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.core.optimizers import lr_at
    from llama_course.engine import build_engine
    from simulator.config import load_config

    ctx = init_distributed(world, 1, 1)
    out = {}
    for name, extra in METHODS.items():
        parallel = {"compression": name, **extra} if not extra else extra
        cfg = load_config("configs/tiny.yaml", [f"cluster.num_gpus={world}", f"training.steps={steps}",
                                                "training.warmup_steps=5"] +
                          [f"parallel.{k}={v}" for k, v in parallel.items()])
        seqs = pack(load_tokens(cfg).train, cfg.seq_len)
        sampler = BatchSampler(len(seqs), cfg.parallel.global_batch_size, cfg.training.seed)
        engine = build_engine(cfg, ctx, build_model(cfg))
        losses, sent = [], []
        for step in range(steps):
            batches = [get_batch(seqs, i) for i in sampler.shard(step, ctx.dp_rank, world, cfg.parallel.micro_batch_size)]
            o = engine.train_step(batches, lr_at(step, cfg))
            losses.append(o["loss"])
            sent.append(o["bytes_sent"])
        out[name] = {"losses": losses, "bytes": sum(sent) / len(sent)}
    return out


def main() -> None:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    from llama_course.core.testing import spawn

    res = spawn(worker, args.nproc, args.steps, timeout=1200)[0]
    marks = sorted({1, *range(10, args.steps + 1, max(args.steps // 6, 1)), args.steps})
    base = res["none"]["bytes"]
    print(f"\n### {args.nproc} processes, tiny model, {args.steps} steps: training loss at step\n")
    print("| method | " + " | ".join(str(m) for m in marks) + " | bytes sent / step / rank | vs none |")
    print("|---|" + "---:|" * (len(marks) + 2))
    for name, r in res.items():
        cells = " | ".join(f"{r['losses'][m - 1]:.3f}" for m in marks)
        print(f"| {name} | {cells} | {r['bytes'] / 1e6:.3f} MB | {r['bytes'] / base:.3f} |")


if __name__ == "__main__":
    main()
