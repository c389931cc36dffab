"""Finding and reading checkpoints: which folder is intact, which one a run resumes from, and loading
what it holds (llama_course/core/checkpoint.py writes them; its docstring describes the layout).

Files are read with torch.load(weights_only=True): a checkpoint is data, never code. A folder is intact when
its manifest exists and every file it lists has the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import torch

from llama_course.core.model import model_from_state
from llama_course.core.tokenizer import BPETokenizer
from simulator.config import ConfigError, load_config

STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str) -> str | None:
    """None if the checkpoint folder is complete and intact, else the reason (one line)."""
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.exists(manifest_path):
        return "no manifest (an interrupted write)"
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return "manifest is unreadable"
    for name, digest in manifest.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return f"{name} is missing"
        if sha256(file) != digest:
            return f"{name} fails its checksum (truncated or corrupted)"
    return None


def candidates(root: str) -> list:
    """Checkpoint folders under root, newest first (the one `latest` names goes first)."""
    if not os.path.isdir(root):
        return []
    found = sorted((d for d in os.listdir(root) if STEP_DIR.match(d)), reverse=True)
    latest_file = os.path.join(root, "latest")
    if os.path.exists(latest_file):
        name = open(latest_file).read().strip()
        if name in found:
            found.remove(name)
            found.insert(0, name)
    return [os.path.join(root, d) for d in found]


def find_latest(root: str, log=None) -> str | None:
    """The newest intact checkpoint under root; bad ones are reported in one line each and skipped."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for path in candidates(root):
        problem = verify(path)
        if problem is None:
            return path
        log(f"checkpoint {os.path.basename(path)} is unusable ({problem}); trying the previous one")
    return None


def resume_point(root: str, log=None) -> str | None:
    """The checkpoint a run with `--checkpoint-dir root` resumes from: the newest intact one, None for an
    empty folder. When the folder holds checkpoints and none is intact, that is an error (ConfigError), not a
    silent start from step 1 over them: `llama-course train --fresh` starts over and keeps them aside."""
    notes = []
    found = find_latest(root, notes.append)
    if found is None and notes:
        first = notes[0].removeprefix("checkpoint ").split("; trying")[0]
        raise ConfigError(f"--checkpoint-dir {root}: no intact checkpoint ({first}"
                          f"{f' and {len(notes) - 1} more' if len(notes) > 1 else ''}); "
                          f"--fresh starts from step 0 and moves them aside")
    for note in notes:                  # fell back to an older intact one: say which were skipped
        (log or (lambda msg: print(msg, file=sys.stderr)))(note)
    return found


def resolve_path(path: str) -> str:
    """A checkpoint folder from a path that is either a step folder or a --checkpoint-dir root."""
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint not found: {path}")
    if not os.path.isdir(path):
        raise ConfigError(f"checkpoint {path} is a file; give the folder `train --checkpoint-dir` wrote")
    if os.path.exists(os.path.join(path, "manifest.json")) or os.path.exists(os.path.join(path, "model.pt")):
        problem = verify(path) if os.path.exists(os.path.join(path, "manifest.json")) else None
        if problem:
            raise ConfigError(f"checkpoint {path} is unusable: {problem}")
        return path
    found = find_latest(path)
    if found is None:
        raise ConfigError(f"no usable checkpoint in {path}")
    return found


def load_manifest(path: str) -> dict:
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def load_rank_state(path: str, rank: int) -> dict:
    """This rank's saved state (weights_only: tensors, numbers and containers, never code)."""
    file = os.path.join(path, f"rank_{rank:05d}.pt")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_model(path: str):
    """(model, config, tokenizer) of a checkpoint folder or root, for eval / generate / compress.
    Pruned and quantized checkpoints (`llama-course compress`) rebuild with their smaller or packed shapes."""
    path = resolve_path(path)
    manifest = load_manifest(path)
    cfg = load_config(manifest["config"])
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    model = model_from_state(cfg, state, manifest.get("compression"))
    model.load_state_dict(state)
    tokenizer = None
    tok_file = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_file):
        tokenizer = BPETokenizer.load(tok_file)
    return model, cfg, tokenizer
