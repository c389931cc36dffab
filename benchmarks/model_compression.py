"""Model compression measured on a trained tiny LLaMA: quantization, pruning, distillation (issue 9 goals).

    python benchmarks/model_compression.py                       # trains the teacher, then every variant
    python benchmarks/model_compression.py --teacher runs/demo/checkpoints --json runs/compression.json

The teacher is `configs/tiny.yaml` trained in this process (one rank; `--teacher-steps`), or an existing
checkpoint (`--teacher`, e.g. `make demo`'s runs/demo/checkpoints). Every variant is written by
`llama_course.compression.model_compression.compress` (what `llama-course compress` runs) and measured by
`evaluate_checkpoint` (what `llama-course eval --json` prints): the whole held-out split of the corpus.

Goals: int8 val loss within 2% of the teacher at <= 0.35x its parameter bytes; 50% unstructured magnitude
pruning with a short fine-tune within 25%; a student with half the layers within 15% of the teacher and
better than the same student trained from scratch (same loop, same steps, alpha = 0: labels only).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from simulator.cli_args import Parser  # noqa: E402


def variants(ft: int, student_steps: int, lr: float = 3e-3) -> list:
    """(name, method, options, goal) in the order of the table; goal(row, teacher) -> (text, ok) or None."""
    within = lambda pct: lambda r, t, rows: (f"loss within {pct}%", r["val_loss"] <= t["val_loss"] * (1 + pct / 100))
    scratch = f"student 2 layers, from scratch (labels only), {student_steps} steps"

    def student_goal(r, t, rows):
        base = next(x for x in rows if x["name"] == scratch)
        return ("within 15%, better than from scratch",
                r["val_loss"] <= 1.15 * t["val_loss"] and r["val_loss"] < base["val_loss"])

    student = [f"steps={student_steps}", "student_layers=2"]
    return [
        ("int8 (per channel)", "int8", [], lambda r, t, rows: (
            "within 2%, <= 0.35x bytes",
            r["val_loss"] <= 1.02 * t["val_loss"] and r["params_bytes"] <= 0.35 * t["params_bytes"])),
        ("int4 (groups of 64)", "int4", ["group_size=64"], None),
        ("int4 (groups of 16)", "int4", ["group_size=16"], None),
        (f"control: no pruning, the same {ft} fine-tune steps", "prune", ["sparsity=0", f"finetune_steps={ft}"], None),
        ("prune 50% unstructured, no fine-tune", "prune", ["sparsity=0.5"], None),
        (f"prune 50% unstructured + {ft} steps", "prune", ["sparsity=0.5", f"finetune_steps={ft}"], within(25)),
        ("prune 50% unstructured global + " f"{ft} steps", "prune",
         ["sparsity=0.5", "scope=global", f"finetune_steps={ft}"], None),
        ("prune 50% heads + FFN channels, no fine-tune", "prune", ["sparsity=0.5", "structured=true"], None),
        (f"prune 50% heads + FFN channels + {ft} steps", "prune",
         ["sparsity=0.5", "structured=true", f"finetune_steps={ft}"], None),
        (f"control: teacher trained {student_steps} more steps (4 layers, same lr)", "prune",
         ["sparsity=0", f"finetune_steps={student_steps}", f"lr={lr}"], None),
        (scratch, "distill",
         student + ["alpha=0", "init=random"], None),
        (f"student 2 layers, distilled, random init, {student_steps} steps", "distill",
         student + ["init=random"], None),
        (f"student 2 layers, distilled (T = 1), random init, {student_steps} steps", "distill",
         student + ["init=random", "temperature=1"], None),
        (f"student 2 layers, teacher-layer init, labels only (alpha = 0), {student_steps} steps", "distill",
         student + ["init=teacher", "alpha=0"], None),
        (f"student 2 layers, distilled, teacher-layer init, {student_steps} steps", "distill",
         student + ["init=teacher"], student_goal),
    ]


def train_teacher(out: str, steps: int) -> str:
    from llama_course.trainer import run_worker
    from simulator.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"),
                      ["cluster.num_gpus=1", f"training.steps={steps}", "training.eval_every=0"])
    run_worker(cfg, checkpoint_dir=out, quiet=True)
    return out


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", help="an existing checkpoint (default: train one)")
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--finetune-steps", type=int, default=50)
    ap.add_argument("--student-steps", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_model_compression"))
    ap.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--only", metavar="TEXT", help="run only the variants whose name contains TEXT")
    args = ap.parse_args(argv)

    import torch

    from llama_course.commands.eval import evaluate_checkpoint
    from llama_course.compression.model_compression import compress

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    teacher_path = args.teacher or train_teacher(os.path.join(args.out, "teacher"), args.teacher_steps)
    teacher = evaluate_checkpoint(teacher_path)
    teacher_s = time.time() - t0
    print(f"teacher {teacher['checkpoint']}: val_loss {teacher['val_loss']:.4f} ({teacher_s:.0f} s)", flush=True)
    rows = [dict(name="teacher (fp32)", seconds=teacher_s, goal=None, ok=None, **teacher)]
    for i, (name, method, opts, goal) in enumerate(variants(args.finetune_steps, args.student_steps)):
        if args.only and args.only not in name:
            continue
        t = time.time()
        out = os.path.join(args.out, f"v{i:02d}_{method}")
        compress(teacher_path, method, out, opts, log=lambda msg: None)
        row = dict(name=name, command=f"llama-course compress TEACHER --method {method} --out {out} "
                   + " ".join(f"--set {o}" for o in opts), **evaluate_checkpoint(out))
        row["seconds"] = time.time() - t
        row["goal"], row["ok"] = goal(row, teacher, rows) if goal and not args.only else (None, None)
        rows.append(row)
        print(f"{name}: val_loss {row['val_loss']:.4f} ({row['val_loss'] / teacher['val_loss'] - 1:+.1%}), "
              f"bytes {row['params_bytes'] / teacher['params_bytes']:.3f}x ({row['seconds']:.0f} s)", flush=True)
    print()
    print(markdown(rows, teacher))
    if args.json:
        meta = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                "torch": torch.__version__, "threads": torch.get_num_threads(), "argv": sys.argv[1:]}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0 if all(r["ok"] in (None, True) for r in rows) else 1


def markdown(rows: list, teacher: dict) -> str:
    lines = ["| variant | val loss | vs teacher | params bytes | bytes ratio | block sparsity | fwd FLOPs/token | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        goal = "" if r["goal"] is None else f"{r['goal']}: {'met' if r['ok'] else 'MISSED'}"
        lines.append(f"| {r['name']} | {r['val_loss']:.4f} | {r['val_loss'] / teacher['val_loss'] - 1:+.1%} | "
                     f"{r['params_bytes']:,} | {r['params_bytes'] / teacher['params_bytes']:.3f}x | "
                     f"{r['sparsity']:.1%} | {r['forward_flops_per_token'] / teacher['forward_flops_per_token']:.2f}x "
                     f"| {goal} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
