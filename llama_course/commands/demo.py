"""`make demo`: the main job. Train the tiny LLaMA on the built-in corpus with 2 gloo processes.

    python -m llama_course.commands.demo [--steps N] [--out runs/demo]

It prints the loss as it falls, the simulator's predicted step time beside the measured one, a sample
of generated text, and writes a loss curve (runs/demo/loss.png), per-step metrics (metrics.jsonl) and a
checkpoint you can pass to `llama-course eval`, `generate` and `compress`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "tiny.yaml")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--config", default=CONFIG)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    metrics = os.path.join(args.out, "metrics.jsonl")
    ckpt_dir = os.path.join(args.out, "checkpoints")
    overrides = [f"training.steps={args.steps}", f"training.eval_every={max(args.steps // 4, 1)}"]

    from llama_course.commands.cli import main as cli_main

    print(f"== training the tiny LLaMA on the built-in corpus ({args.config}, {args.steps} steps, 2 gloo processes)",
          flush=True)
    import shutil

    shutil.rmtree(ckpt_dir, ignore_errors=True)
    argv = ["train", args.config, "--metrics", metrics, "--checkpoint-dir", ckpt_dir]
    for o in overrides:
        argv += ["--set", o]
    code = cli_main(argv)
    if code:
        return code
    with open(metrics) as f:
        records = [json.loads(line) for line in f]

    from llama_course.core.plots import plot_loss

    png = os.path.join(args.out, "loss.png")
    plot_loss({"tiny, dp=2": records}, png, title="tiny LLaMA on the built-in corpus")
    first, last = records[0], records[-1]
    print(f"\n== loss {first['loss']:.3f} -> {last['loss']:.3f} (held-out {last.get('val_loss', float('nan')):.3f}); "
          f"curve: {png}")

    measured = statistics.median(r["step_time_s"] for r in records[len(records) // 4:])
    try:
        from simulator.config import load_config
        from simulator.simulate import simulate

        predicted = simulate(load_config(args.config, overrides))["step_time_s"]
        err = (predicted - measured) / measured
        print(f"== step time: simulator predicts {predicted * 1e3:.1f} ms, measured {measured * 1e3:.1f} ms "
              f"(median; error {err:+.0%})")
    except ImportError:
        print(f"== step time: measured {measured * 1e3:.1f} ms (median)")

    from llama_course.commands.generate import generate_text
    from llama_course.core.checkpoint import load_model

    model, _, tokenizer = load_model(ckpt_dir)
    prompt = "The if statement"
    print(f"\n== sample (prompt {prompt!r}):\n{generate_text(model, tokenizer, prompt, 120, 0.7, 40)}\n")
    print(f"next: llama-course eval {ckpt_dir}   |   llama-course simulate {os.path.relpath(args.config)}   |   make test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
