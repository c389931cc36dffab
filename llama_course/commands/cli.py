"""The `llama-course` command line (docs/design.md, "Command line").

    llama-course simulate CONFIG [--set k=v ...] [--json] [--trace FILE]
    llama-course train    CONFIG [--set k=v ...] [--nproc N] [--metrics FILE] [--checkpoint-dir DIR]
    llama-course compare  CONFIG [--set k=v ...] [--json]
    llama-course plan     CONFIG [--top K] [--json]
    llama-course bench    [--json]
    llama-course eval     CHECKPOINT [--json]
    llama-course compress CHECKPOINT --method M --out DIR
    llama-course generate CHECKPOINT --prompt TEXT
    llama-course grade    [--impl labs|solutions] [--json]
    llama-course quiz     [--n N] [--seed S]
    llama-course --version

`llama-course COMMAND --help` shows a command's options and an example (EXAMPLES below, the README's table).
Each subcommand's code is imported only when it runs, so `simulate` starts without importing torch.
A user mistake (a bad config, a missing file) prints one line `error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llama_course import __version__
from simulator.cli_args import Parser, at_least
from simulator.config import ConfigError

# subcommand -> "module:function"; the function takes the parsed argparse namespace and returns an exit code
HANDLERS = {
    "simulate": "simulator.simulate:cli",
    "train": "llama_course.trainer:cli",
    "compare": "llama_course.commands.compare:cli",
    "plan": "simulator.plan:cli",
    "bench": "llama_course.commands.bench:cli",
    "eval": "llama_course.commands.eval:cli",
    "compress": "llama_course.commands.compress:cli",
    "generate": "llama_course.commands.generate:cli",
    "grade": "llama_course.commands.grade:cli",
    "quiz": "llama_course.commands.quiz:cli",
}


EXAMPLES = {
    "simulate": "llama-course simulate configs/tiny.yaml --json",
    "train": "llama-course train configs/tiny.yaml --set parallel.tp=2 --metrics runs/tp2.jsonl",
    "compare": "llama-course compare configs/tiny.yaml --set training.steps=60 --calibrate",
    "plan": "llama-course plan configs/llama-7b-a100.yaml --top 5",
    "bench": "llama-course bench --quick",
    "eval": "llama-course eval runs/demo/checkpoints --json",
    "compress": "llama-course compress runs/demo/checkpoints --method int8 --out runs/int8",
    "generate": 'llama-course generate runs/demo/checkpoints --prompt "The for statement"',
    "grade": "llama-course grade --only collectives",
    "quiz": "llama-course quiz --n 3",
}
"""One example per subcommand: shown by `--help` and in the README's command table (tests/test_cli.py keeps
the two equal; tests/test_readme.py runs every README command line)."""


def _add_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config (schema: docs/design.md); fields default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, value read as YAML: --set parallel.tp=2 (repeatable)")


CHECKPOINT_HELP = "a checkpoint folder: what `train --checkpoint-dir DIR` wrote (its latest step) or one step folder"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="llama-course", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES.values())
        + "\n\n`llama-course COMMAND --help` for a command's options. Docs: docs/cli.md (or `make serve`).")
    parser.add_argument("--version", action="version", version=f"llama-course {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add_command(sub, "simulate", "predict step time, throughput, memory and MFU of a config")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace of one simulated step")

    p = _add_command(sub, "train", "train for real (gloo on CPU, NCCL on GPU)")
    _config_args(p)
    p.add_argument("--nproc", type=int, help="processes to launch (default: what the config needs)")
    p.add_argument("--metrics", metavar="FILE", help="write one JSON line per step")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save checkpoints here and resume from the latest")
    p.add_argument("--max-restarts", type=at_least(0), default=0, help="restart all workers after a failure, up to R times")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace of the measured schedule")
    p.add_argument("--trace-steps", type=at_least(1), default=3, metavar="N", help="steps the trace keeps (the last N)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--fresh", action="store_true",
                   help="start from step 0 even if --checkpoint-dir holds checkpoints (they are moved aside "
                        "into DIR/replaced-<time>/, not deleted)")
    p.add_argument("--allow-noop", action="store_true",
                   help="exit 0 when the checkpoint is already at training.steps (default: an error)")

    p = _add_command(sub, "compare", "simulate and train the same config, report the prediction error")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trace-dir", metavar="DIR", help="write predicted and measured Chrome traces here")
    p.add_argument("--calibrate", action="store_true",
                   help="cpu: time this machine's speed before and after training and predict at that speed "
                        "(a shared machine drifts); the uncalibrated prediction is reported too")

    p = _add_command(sub, "plan", "search dp/tp/pp/zero/micro-batch layouts for a model and cluster")
    _config_args(p)
    p.add_argument("--top", type=at_least(1), default=5, help="how many layouts to show")
    p.add_argument("--json", action="store_true", help="print a JSON list, best first")

    p = _add_command(sub, "bench", "measure this machine and write the `cpu` hardware profile")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE", help="where to write the profile")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    p.add_argument("--repeat", type=at_least(1), default=1, metavar="N",
                   help="run the whole bench N times and keep the median of every number (a busy machine)")

    p = _add_command(sub, "eval", "held-out loss, perplexity and parameter bytes of a checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _add_command(sub, "compress", "prune, quantize or distill a checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--method", required=True, choices=["prune", "int8", "int4", "distill"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="method options, e.g. --set sparsity=0.5 --set structured=true")

    p = _add_command(sub, "generate", "sample text from a checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=at_least(0), default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--seed", type=int, default=0)

    p = _add_command(sub, "grade", "run the graded exercise tests and print a score table")
    p.add_argument("--impl", choices=["labs", "solutions"], default="labs")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--out", metavar="FILE", default="grade_report.json", help="where to write the JSON report")
    p.add_argument("--only", metavar="CONCEPT", help="grade one concept")

    p = _add_command(sub, "quiz", "interview questions with fresh numbers, auto-graded")
    p.add_argument("--n", type=at_least(1), default=3, help="questions to ask")
    p.add_argument("--seed", type=int, help="seed for the numbers")
    p.add_argument("--lang", choices=["en", "zh"], default="en")
    p.add_argument("--answers", action="store_true", help="print the answers instead of asking")
    return parser


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module_name, func_name = HANDLERS[args.command].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        code = handler(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:               # `llama-course simulate ... | head`
        sys.stderr.close()
        return 0
    return int(code or 0)


def load_config_from_args(args):
    """The validated Config of a subcommand's CONFIG and --set arguments."""
    from simulator.config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "overrides", []))


if __name__ == "__main__":
    sys.exit(main())
