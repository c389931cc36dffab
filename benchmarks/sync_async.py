"""Synchronous and asynchronous updates, measured: the tiny model under BSP (all-reduce and parameter server),
ASP, SSP, local SGD and DiLoCo, without and with one straggler (concept 08, sync_async).

    python benchmarks/sync_async.py [--steps 40] [--workers 3] [--straggler 3]

Prints, per mode and straggler factor, the final loss, the training seconds and the mean staleness
(`llama_course.coordination.sync_async.summarise`). About 10 s of launch plus training per run on a
2-core machine; 12 runs by default.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llama_course.coordination.sync_async import summarise  # noqa: E402
from llama_course.trainer import train  # noqa: E402
from simulator.cli_args import Parser  # noqa: E402

MODES = {
    "bsp (all-reduce)": ["parallel.strategy=collective", "parallel.sync=bsp"],
    "bsp (parameter server)": ["parallel.strategy=parameter_server", "parallel.sync=bsp"],
    "asp": ["parallel.strategy=parameter_server", "parallel.sync=asp"],
    "ssp (s=1)": ["parallel.strategy=parameter_server", "parallel.sync=ssp", "parallel.staleness=1"],
    "local_sgd (H=4)": ["parallel.strategy=collective", "parallel.sync=local_sgd", "parallel.local_steps=4"],
    "diloco (H=4)": ["parallel.strategy=collective", "parallel.sync=local_sgd", "parallel.local_steps=4",
                     "parallel.outer_lr=0.7", "parallel.outer_momentum=0.9"],
}


def experiment(steps: int = 40, workers: int = 3, straggler: float | None = 3.0, modes=None,
               config: str | None = None, overrides=()) -> list:
    """Train the tiny model under each sync mode, without and with one straggler (the last worker
    `straggler` x slower). Returns one record per (mode, straggler, step): loss, step, wall time since
    the start (`time_s`), staleness where recorded. Plot loss against `step` and against `time_s`
    (`llama_course.core.plots`), or `sync_async.summarise(records)`.

    About 10 s of launch plus training per run on a 2-core machine; 12 runs by default."""
    base = [f"training.steps={steps}", "parallel.num_servers=1", f"parallel.dp={workers}", "cluster.num_gpus=null",
            f"parallel.global_batch_size={4 * workers}", "parallel.micro_batch_size=4", "training.warmup_steps=5",
            "training.eval_every=0", "seq_len=64", "training.precision=fp32", "parallel.implementation=course",
            *overrides]
    records = []
    selected = MODES if modes is None else {m: MODES[m] for m in modes}
    for mode, sets in selected.items():
        for slow in ([None, straggler] if straggler else [None]):
            extra = [f"faults.slow={{{workers - 1}: {slow}}}"] if slow else []
            start = time.perf_counter()
            recs = train(config, base + sets + extra)
            elapsed, wall = time.perf_counter() - start, 0.0
            for r in recs:
                wall += r["step_time_s"]
                records.append({"mode": mode, "straggler": slow or 1.0, "step": r["step"], "loss": r["loss"],
                                "time_s": wall, "staleness": r.get("staleness"), "run_s": elapsed})
    return records


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--straggler", type=float, default=3.0, help="slowdown of the last worker (0: none)")
    args = ap.parse_args()
    for row in summarise(experiment(args.steps, args.workers, args.straggler or None)):
        print(f"{row['mode']:<24} straggler {row['straggler']:>3g}x  final loss {row['final_loss']:.3f}  "
              f"{row['time_s']:6.1f} s  mean staleness {row['mean_staleness']:.2f}")


if __name__ == "__main__":
    main()
