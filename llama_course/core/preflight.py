"""Checks `llama-course train` makes before it starts any process, so that a mistake or a surprising state
costs one line (`error: ...`, exit code 2) and changes no file, instead of a traceback from every rank or
a run that silently does something else:

- `--metrics` / `--trace` must be writable (probed without creating anything that stays);
- `--checkpoint-dir` must hold an intact checkpoint of the same model, not already at `training.steps`
  (`--allow-noop` makes that a success), or nothing; a folder whose checkpoints are all unusable is an
  error (`--fresh` moves them into DIR/replaced-<time>/, deleting nothing, and starts from step 0).

    llama-course train configs/tiny.yaml --checkpoint-dir runs/ck --set training.steps=400
"""

from __future__ import annotations

import os
import time

import torch

from llama_course.core.checkpoint import STEP_DIR, load_manifest, resume_point
from simulator.capabilities import engine_for
from simulator.config import ConfigError
from simulator.config_checks import check_writable
from simulator.workload import count_params


def check_run(cfg, metrics=None, trace=None, checkpoint_dir=None, fresh=False, allow_noop=False, log=print) -> int:
    """Checks made once, before any process starts, so that a mistake costs one line and no file: the
    metrics and trace files can be written, and the checkpoint folder can be resumed (check_resume).
    `fresh` first moves the folder's checkpoints aside (set_aside). Returns the step the run resumes from."""
    for flag, path in (("--metrics", metrics), ("--trace", trace)):
        if path:
            check_writable(flag, path)
    if not checkpoint_dir:
        return 0
    if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise ConfigError(f"--checkpoint-dir: {checkpoint_dir} is a file, not a folder")
    check_writable("--checkpoint-dir", os.path.join(checkpoint_dir, "latest"))
    if fresh:
        moved = set_aside(checkpoint_dir)
        if moved:
            log(f"--fresh: starting from step 0; the earlier checkpoints are kept in {moved}")
        return 0
    return check_resume(checkpoint_dir, cfg.to_dict(), cfg.training.steps, allow_noop)


def check_resume(root: str, config: dict, steps: int, allow_noop: bool = False, log=None) -> int:
    """Check, before any process starts, that a run of `config` (a Config's to_dict()) for `steps` steps can
    resume from `root`; returns the step it resumes from (0: a fresh start). ConfigError (one line) when the
    folder's checkpoints are all unusable, were written by a different model, or are already at `steps`
    (then there is nothing to train; with `allow_noop` that returns `steps`)."""
    found = resume_point(root, log)
    if found is None:
        return 0
    manifest = load_manifest(found)
    theirs, ours = manifest.get("config", {}).get("model", {}), config.get("model", {})
    diff = [f"{k} {theirs.get(k)} there, {ours.get(k)} here" for k in sorted(set(theirs) | set(ours))
            if k != "preset" and theirs.get(k) != ours.get(k)]
    if diff:
        raise ConfigError(f"--checkpoint-dir {root}: its checkpoint is of a different model ({'; '.join(diff[:3])}); "
                          f"choose another folder, or --fresh to start over (the old checkpoints are kept aside)")
    step = int(manifest["step"])
    if step >= steps and not allow_noop:
        raise ConfigError(f"--checkpoint-dir {root}: already at step {step} and training.steps is {steps}: nothing "
                          f"to train; raise it (--set training.steps={step + steps}) or pass --allow-noop")
    return step


def set_aside(root: str) -> str | None:
    """Move the checkpoints of `root` (step folders and `latest`) into root/replaced-<time>/, deleting
    nothing (`train --fresh`); returns that folder, None when there was nothing to move."""
    if not os.path.isdir(root):
        return None
    names = [d for d in os.listdir(root) if STEP_DIR.match(d) or d == "latest" or d.endswith(".tmp")]
    if not names:
        return None
    dest = os.path.join(root, time.strftime("replaced-%Y%m%d-%H%M%S"))
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(root, time.strftime("replaced-%Y%m%d-%H%M%S") + f"-{n}")
    os.makedirs(dest)
    for name in names:
        os.replace(os.path.join(root, name), os.path.join(dest, name))
    return dest


def banner(cfg, nproc: int, start: int = 0) -> str:
    """The one line `train` prints before the first step: model, layout, engine (the capability table's
    row), device, processes, steps."""
    p, m = cfg.parallel, cfg.model
    cuda = torch.cuda.is_available() and os.environ.get("LLAMA_COURSE_DEVICE", "cuda") == "cuda"
    device = f"cuda ({torch.cuda.get_device_name()}, nccl)" if cuda else "cpu (gloo)"
    servers = f" + {p.num_servers} parameter server(s)" if p.strategy == "parameter_server" else ""
    steps = f"steps {start + 1}-{cfg.training.steps}" + (f" (resuming at step {start})" if start else "")
    return (f"train: {m.arch} {m.n_layers} layers x dim {m.dim} ({count_params(m, cfg.seq_len) / 1e6:.2f}M "
            f"parameters) | layout dp {p.dp}{f' x cp {p.cp}' if p.cp > 1 else ''} x tp {p.tp} x pp {p.pp}{f' (ep {p.ep})' if p.ep > 1 else ''}{servers} | engine {engine_for(cfg)} "
            f"({p.implementation}) | device {device} | {nproc} process{'es' if nproc > 1 else ''} | {steps}")
