"""`make demo`: the main job. Train the tiny LLaMA on the built-in corpus with 2 gloo processes.

    python -m llama_course.commands.demo [--steps N] [--out runs/demo] [--fresh]

1. Measures this machine's speed (the speed probe of `compare --calibrate`: the tiny model's
   forward-backward in 2 processes at once, as the run's 2 ranks compute, the slowest of them timed
   against what the simulator's cpu profile predicts for it).
2. Trains configs/tiny.yaml for 400 steps with 2 gloo processes (the banner says layout, engine, device).
3. Probes the speed again and prints the simulator's predicted step time at the measured speed beside
   the measured median step time (and the prediction on the profile as it is).
4. Reports the held-out loss as `llama-course eval` does (the whole validation split) and samples text.

It writes a loss curve (loss.png), per-step metrics (metrics.jsonl) and a checkpoint (checkpoints/) you
can pass to `llama-course eval`, `generate` and `compress`. Earlier runs are kept: when runs/demo already
holds one, this run goes to runs/demo-2 (then -3, ...); `--fresh` replaces runs/demo instead.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys

from simulator.cli_args import Parser
from simulator.config import ConfigError, load_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "tiny.yaml")
DEMO_MARKERS = ("metrics.jsonl", "checkpoints", "loss.png")
"""Files only a demo run leaves: `--fresh` deletes a folder only if it holds one of them."""


def demo_overrides(steps: int) -> list:
    """The demo's --set overrides of configs/tiny.yaml (tests train the same run)."""
    return [f"training.steps={steps}", f"training.eval_every={max(steps // 4, 1)}"]


def run_folder(out: str, fresh: bool) -> str:
    """Where this run writes: `out` when free; with `fresh`, `out` emptied (only if a demo made it); else the
    first free out-2, out-3, ... so that an earlier run is never overwritten."""
    if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return out
    if fresh:
        if not os.path.isdir(out) or not any(os.path.exists(os.path.join(out, m)) for m in DEMO_MARKERS):
            raise ConfigError(f"--fresh: {out} does not look like a demo run (no {' / '.join(DEMO_MARKERS)}); "
                              f"not deleting it")
        shutil.rmtree(out)
        return out
    n = 2
    while os.path.exists(f"{out}-{n}"):
        n += 1
    return f"{out}-{n}"


def main(argv=None) -> int:
    ap = Parser(prog="python -m llama_course.commands.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="runs/demo", help="run folder (an existing run is kept: this one goes to OUT-2)")
    ap.add_argument("--fresh", action="store_true", help="replace the run in --out instead of keeping it")
    ap.add_argument("--config", default=CONFIG)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    from llama_course.commands.bench import speed_factor
    from llama_course.commands.cli import main as cli_main

    out = run_folder(args.out, args.fresh)
    if out != args.out:
        print(f"== {args.out} holds an earlier run (kept); this run writes {out}  (--fresh replaces {args.out})")
    os.makedirs(out, exist_ok=True)
    metrics = os.path.join(out, "metrics.jsonl")
    ckpt_dir = os.path.join(out, "checkpoints")
    overrides = demo_overrides(args.steps)
    config = os.path.relpath(args.config)

    processes = load_config(args.config, overrides).world_size
    print(f"== [1/4] measuring this machine's speed: the tiny model's forward + backward, {processes} processes "
          f"at once as the run's ranks compute, 9 steps (`compare --calibrate`'s probe)", flush=True)
    probes = [speed_factor(processes=processes)]
    print(f"== [2/4] training the tiny LLaMA on the built-in corpus ({config}, {args.steps} steps, "
          f"2 gloo processes) into {out}", flush=True)
    argv = ["train", args.config, "--metrics", metrics, "--checkpoint-dir", ckpt_dir]
    for o in overrides:
        argv += ["--set", o]
    code = cli_main(argv)
    if code:
        return code
    with open(metrics) as f:
        records = [json.loads(line) for line in f]
    probes.append(speed_factor(processes=processes))

    from llama_course.core.plots import plot_loss

    png = os.path.join(out, "loss.png")
    plot_loss({"tiny, dp=2": records}, png, title="tiny LLaMA on the built-in corpus")
    print(f"\n== [3/4] step time: {predicted_vs_measured(args.config, overrides, records, probes)}")

    from llama_course.commands.eval import evaluate_checkpoint, held_out_words
    from llama_course.commands.generate import generate_text
    from llama_course.core.checkpoint import load_model

    held = evaluate_checkpoint(ckpt_dir)
    print(f"\n== [4/4] loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f} (training batches); held-out loss "
          f"{held['val_loss']:.3f} ({held_out_words(held)}, as `llama-course eval` reports it); curve: {png}")
    model, _, tokenizer = load_model(ckpt_dir)
    prompt = "The if statement"
    print(f"\n== sample (prompt {prompt!r}):\n{generate_text(model, tokenizer, prompt, 120, 0.7, 40)}\n")
    print(next_steps(ckpt_dir, config))
    return 0


def predicted_vs_measured(config: str, overrides: list, records: list, probes: list) -> str:
    """The simulator's step time at this machine's probed speed beside the measured median (second half of
    the run), with the prediction on the profile as it is and how to calibrate fully."""
    from llama_course.commands.compare import scaled_profile
    from simulator.hardware import cpu_profile_path
    from simulator.simulate import simulate

    measured = statistics.median(r["step_time_s"] for r in records[len(records) // 2:])
    cfg = load_config(config, overrides)
    factor = statistics.mean(p["speed_factor"] for p in probes)
    spread = max(p["measured_s"] for p in probes) / min(p["measured_s"] for p in probes)
    raw = simulate(cfg)["step_time_s"]
    with scaled_profile(factor):
        predicted = simulate(cfg)["step_time_s"]
    profile = cpu_profile_path()
    k = probes[0]["processes"]
    how = f"{k} processes at once, the slowest" if k > 1 else "one process"
    fallback = "".join(f"   note: {p['fallback']}; the one-process probe stood in\n" for p in probes[:1] if "fallback" in p)

    def err(x):
        return f"{(x - measured) / measured:+.0%}"

    return (f"simulator predicts {predicted * 1e3:.1f} ms, measured {measured * 1e3:.1f} ms (median of the second "
            f"half; error {err(predicted)})\n"
            f"   speed probe ({how}): forward + backward took "
            f"{probes[0]['measured_s'] * 1e3:.1f} ms before training and {probes[1]['measured_s'] * 1e3:.1f} ms after, "
            f"the profile says {probes[0]['predicted_s'] * 1e3:.1f} ms: "
            f"this machine computes at {1 / factor:.2f}x the profile's speed now, and the prediction uses that\n"
            + fallback +
            f"   profile: {profile}; on it as it is the prediction would be {raw * 1e3:.1f} ms ({err(raw)})\n"
            + (f"   note: this machine looks busy (the probe ran {factor:.1f}x slower than the profile, before / after "
               f"{spread:.2f}x apart): short timings on a loaded machine are unreliable; rerun on a quiet one\n"
               if factor > 3 or spread > 1.5 else "")
            +
            f"   to calibrate fully (collectives, cores shared by processes): `llama-course bench` (minutes; "
            f"writes this machine's profile), then `llama-course compare {os.path.relpath(config)} --calibrate`")


def next_steps(ckpt_dir: str, config: str) -> str:
    """The demo's last lines: how to get `llama-course` on the PATH, then commands to try next."""
    lines = ["next:"]
    venv = sys.prefix if sys.prefix != sys.base_prefix else None
    if venv and os.environ.get("VIRTUAL_ENV") != venv:
        lines.append(f"  source {os.path.relpath(os.path.join(venv, 'bin', 'activate'))}"
                     f"   # once per shell: puts `llama-course` on your PATH")
    lines += [f"  llama-course eval {ckpt_dir}",
              f'  llama-course generate {ckpt_dir} --prompt "The for statement"',
              f"  llama-course simulate {config}",
              "  llama-course --help          # every command, with an example each"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
