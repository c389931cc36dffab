"""comm_bytes on every layout: the simulator's bytes per rank and step against the runtime's, byte for byte.

    python benchmarks/comm_bytes.py                       # every layout below, writes docs/benchmarks/comm_bytes.md
    python benchmarks/comm_bytes.py --only "tp 2" --no-write

Each layout trains the `tiny` LLaMA of configs/tiny.yaml for 2 steps through `compare` (the compare suite's
layouts first, then the other combinations the capability table allows on a CPU with at most 4 processes)
and checks `predicted.comm_bytes` (simulator/comm_bytes.py) against `measured.comm_bytes` (the wire
recorder at the torch.distributed calls): per rank, per step, per kind. A timing-free check that the two
engines mean the same thing by the config; nothing is measured in seconds here.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.compare_suite import BASE, CONFIG, DP, LAYOUTS  # noqa: E402
from simulator.cli_args import Parser  # noqa: E402

EXTRA = [
    ("dp 2 ZeRO-1", DP + ["parallel.dp=2", "parallel.zero_stage=1"]),
    ("dp 2 ZeRO-2", DP + ["parallel.dp=2", "parallel.zero_stage=2"]),
    ("dp 2 ZeRO-2 bf16 wire", DP + ["parallel.dp=2", "parallel.zero_stage=2", "parallel.compression=bf16"]),
    ("dp 2 fp16 wire", DP + ["parallel.dp=2", "parallel.compression=fp16"]),
    ("dp 2 top-k", DP + ["parallel.dp=2", "parallel.compression=topk", "parallel.topk_ratio=0.05"]),
    ("dp 2 PowerSGD", DP + ["parallel.dp=2", "parallel.compression=powersgd", "parallel.powersgd_rank=2"]),
    ("dp 2 ZeRO-1 LAMB", DP + ["parallel.dp=2", "parallel.zero_stage=1", "training.optimizer=lamb"]),
    ("dp 3 bucketed 1 MiB", DP + ["parallel.dp=3", "parallel.bucket_mb=1", "parallel.global_batch_size=12"]),
    ("dp 2 gpt", DP + ["parallel.dp=2", "model.arch=gpt", "model.n_kv_heads=4"]),
    ("dp 2 tied", DP + ["parallel.dp=2", "model.tie_embeddings=true"]),
    ("tp 2 sequence parallel", ["parallel.dp=1", "parallel.tp=2", "parallel.pp=1", "parallel.sequence_parallel=true"]),
    ("tp 2 gpt sequence parallel", ["parallel.dp=1", "parallel.tp=2", "parallel.pp=1", "model.arch=gpt",
                                    "model.n_kv_heads=4", "parallel.sequence_parallel=true"]),
    ("tp 2 x dp 2", ["parallel.dp=2", "parallel.tp=2", "parallel.pp=1"]),
    ("pp 2 x dp 2", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=2"]),
    ("tp 2 x pp 2", ["parallel.dp=1", "parallel.tp=2", "parallel.pp=2"]),
    ("pp 2 uneven stages", ["parallel.dp=1", "parallel.tp=1", "parallel.pp=2", "parallel.first_stage_layers=1"]),
    ("pp 2 x dp 2 uneven stages", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=2", "parallel.last_stage_layers=1"]),
    ("pp 2 interleaved", ["parallel.dp=1", "parallel.tp=1", "parallel.pp=2", "parallel.vpp=2",
                          "parallel.schedule=interleaved_1f1b"]),
    ("local SGD every 2", DP + ["parallel.dp=2", "parallel.sync=local_sgd", "parallel.local_steps=2"]),
    ("dp 2 dynamic batch", DP + ["parallel.dp=2", "load_balance.policy=dynamic_batch"]),
    ("dp 3 backup worker", DP + ["parallel.dp=3", "load_balance.policy=backup_workers", "parallel.global_batch_size=12"]),
    ("parameter server 2 shards", DP + ["parallel.strategy=parameter_server", "parallel.dp=2", "parallel.num_servers=2"]),
    ("parameter server ASP", DP + ["parallel.strategy=parameter_server", "parallel.dp=2", "parallel.sync=asp"]),
    ("tp 2 x dp 2 ZeRO-1", ["parallel.dp=2", "parallel.tp=2", "parallel.pp=1", "parallel.zero_stage=1"]),
    ("tp 2 x dp 2 ZeRO-2 sequence parallel", ["parallel.dp=2", "parallel.tp=2", "parallel.pp=1", "parallel.zero_stage=2",
                                              "parallel.sequence_parallel=true"]),
    ("pp 2 x dp 2 ZeRO-1", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=2", "parallel.zero_stage=1"]),
    ("pp 2 x dp 2 ZeRO-2 GPipe", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=2", "parallel.zero_stage=2",
                                  "parallel.schedule=gpipe"]),
    ("tp 2 x dp 2 top-k", ["parallel.dp=2", "parallel.tp=2", "parallel.pp=1", "parallel.compression=topk",
                           "parallel.topk_ratio=0.05"]),
    ("pp 2 x dp 2 bf16 wire", ["parallel.dp=2", "parallel.tp=1", "parallel.pp=2", "parallel.compression=bf16"]),
    ("dp 2 dynamic batch ZeRO-2", DP + ["parallel.dp=2", "load_balance.policy=dynamic_batch", "parallel.zero_stage=2"]),
    ("dp 3 backup worker ZeRO-1", DP + ["parallel.dp=3", "load_balance.policy=backup_workers",
                                        "parallel.global_batch_size=12", "parallel.zero_stage=1"]),
    ("torch DDP", DP + ["parallel.dp=2", "parallel.implementation=torch"]),
    ("torch FSDP2", DP + ["parallel.dp=2", "parallel.implementation=torch", "parallel.zero_stage=3"]),
    ("torch tp 2", ["parallel.dp=1", "parallel.tp=2", "parallel.pp=1", "parallel.implementation=torch"]),
    ("torch pp 2", ["parallel.dp=1", "parallel.tp=1", "parallel.pp=2", "parallel.implementation=torch"]),
]


def run_layout(name: str, overrides: list, steps: int) -> dict:
    """compare one layout for `steps` steps; its comm_bytes verdict (an error is a row, not a crash)."""
    from llama_course.commands.compare import compare

    try:
        r = compare(CONFIG, BASE + overrides, steps=steps, quiet=True)
    except Exception as e:          # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return {"name": name, "equal": None, "note": f"{type(e).__name__}: {first}"}
    pred, meas = r["predicted"]["comm_bytes"], r["measured"]["comm_bytes"]
    note = next((n for n in r["notes"] if n.startswith("comm_bytes")), "")
    return {"name": name, "equal": r["comm_bytes_equal"], "ranks": len(meas or []),
            "predicted": sum(pred[0][-1].values()) if pred else None,
            "measured": sum(meas[0][-1].values()) if meas else None, "note": note}


def table(rows: list) -> str:
    lines = ["| layout | ranks | comm_bytes | rank 0, last step: predicted B | measured B | note |",
             "|---|---:|---|---:|---:|---|"]
    for r in rows:
        verdict = {True: "**equal**", False: "**differ**", None: "not compared"}[r["equal"]]
        num = lambda x: "-" if x is None else f"{x:,}"  # noqa: E731
        lines.append(f"| {r['name']} | {r.get('ranks', '-')} | {verdict} | {num(r.get('predicted'))} | "
                     f"{num(r.get('measured'))} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", help="run layouts whose name contains this")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not write the docs page")
    args = parser.parse_args(argv)
    layouts = [(n, o) for n, o in LAYOUTS + EXTRA if not args.only or args.only in n]
    t0 = time.time()
    rows = []
    for name, overrides in layouts:
        rows.append(run_layout(name, overrides, args.steps))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    equal = sum(r["equal"] is True for r in rows)
    compared = sum(r["equal"] is not None for r in rows)
    text = f"""# comm_bytes: predicted against measured, byte for byte

Generated by `python benchmarks/comm_bytes.py` on {time.strftime('%Y-%m-%d %H:%M')} ({(time.time() - t0) / 60:.1f}
minutes). Each layout trains the `tiny` LLaMA of `configs/tiny.yaml` for {args.steps} steps with `compare` and
checks `predicted.comm_bytes` (simulator/comm_bytes.py) against `measured.comm_bytes` (the wire recorder,
llama_course/core/wire.py, at every torch.distributed and RPC call): per rank, per optimizer step, per kind
(docs/design.md, "comm_bytes"). The bytes columns sum the kinds of rank 0's last step.

{table(rows)}

**{equal} of {compared} compared layouts equal on every rank and step**; {len(rows) - compared} not compared
(the note says why: the torch implementations communicate inside torch, which the simulator does not model).
"""
    print(f"\n{equal} of {compared} compared layouts equal; {len(rows) - compared} not compared")
    if not args.no_write and not args.only:
        with open(os.path.join(ROOT, "docs", "benchmarks", "comm_bytes.md"), "w") as f:
            f.write(text)
    return 0 if equal == compared else 1


if __name__ == "__main__":
    sys.exit(main())
