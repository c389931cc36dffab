"""Checkpoints that survive a crash at any moment, and resume bit-exactly.

Layout of `--checkpoint-dir DIR`:

    DIR/step_00000010/manifest.json   step, world size, layout, config, sha256 of every file
    DIR/step_00000010/rank_00000.pt   this rank's training state: model part, optimizer part, RNG
    DIR/step_00000010/model.pt        the whole model (for eval, generate, compress)
    DIR/step_00000010/tokenizer.json
    DIR/latest                        name of the newest complete checkpoint

Atomicity: everything is written into `step_N.tmp/`; only when every rank has finished and the manifest
(with checksums) is on disk does rank 0 rename the folder to `step_N` and then replace `latest`
(write a temporary file, fsync, os.replace). A crash at any point leaves the previous checkpoint intact
and `latest` pointing at it. On load, a checkpoint whose manifest is missing or whose checksums fail is
reported in one line and the previous good one is used. Files are read with torch.load(weights_only=True):
a checkpoint is data, never code.

Resume is exact because everything that decides the next step is restored: parameters, optimizer moments
and step counts, the RNG states, and the data position (the sampler is a pure function of the step).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys

import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_torch_save(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier(world_size: int) -> None:
    if world_size > 1 and dist.is_initialized():
        dist.barrier()


def save(root: str, step: int, ctx, engine, config: dict, tokenizer=None, keep: int = 2,
         extra: dict | None = None) -> str:
    """Save a checkpoint of every rank at `step` (collective: every rank calls it). Returns its folder."""
    final = os.path.join(root, step_dir_name(step))
    tmp = final + ".tmp"
    if ctx.rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier(ctx.world_size)
    state = {"engine": engine.state_dict(), "rng": rng_state(), "step": step, "extra": extra or {}}
    if engine.checkpoint_writer():
        atomic_torch_save(state, os.path.join(tmp, f"rank_{ctx.rank:05d}.pt"))
    full = engine.full_model_state()           # collective for sharded layouts; a dict on rank 0 only
    if ctx.rank == 0:
        atomic_torch_save(full, os.path.join(tmp, "model.pt"))
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer.json"))
    _barrier(ctx.world_size)
    if ctx.rank == 0:
        files = {name: sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        manifest = {"step": step, "world_size": ctx.world_size, "engine": engine.name,
                    "layout": {"dp": ctx.dp, "tp": ctx.tp, "pp": ctx.pp}, "config": config, "files": files}
        atomic_write_text(os.path.join(tmp, "manifest.json"), json.dumps(manifest, indent=1))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_text(os.path.join(root, "latest"), step_dir_name(step) + "\n")
        _prune(root, keep)
    _barrier(ctx.world_size)
    return final


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: str, keep: int) -> None:
    steps = sorted(d for d in os.listdir(root) if STEP_DIR.match(d))
    for d in steps[:-keep]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


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


def resolve_path(path: str) -> str:
    """A checkpoint folder from a path that is either a step folder or a --checkpoint-dir root."""
    from simulator.config import ConfigError

    if not os.path.exists(path):
        raise ConfigError(f"checkpoint not found: {path}")
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
    """(model, config, tokenizer) of a checkpoint folder or root, for eval / generate / compress."""
    from llama_course.model import Transformer
    from simulator.config import load_config

    path = resolve_path(path)
    manifest = load_manifest(path)
    cfg = load_config(manifest["config"])
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    model = Transformer(cfg.model, max_seq_len=max(cfg.seq_len, 16))
    model.load_state_dict(state)
    tokenizer = None
    tok_file = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_file):
        from llama_course.tokenizer import BPETokenizer

        tokenizer = BPETokenizer.load(tok_file)
    return model, cfg, tokenizer
