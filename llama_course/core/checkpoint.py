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

Sharded: every rank writes its own part in parallel (rank_N.pt: the ZeRO shard, the tensor- or
pipeline-parallel slice it owns; replicas of one shard write once), and the manifest ties them together.
Engines whose model holds DTensors (torch FSDP2, DTensor tensor parallel) are saved instead with
torch.distributed.checkpoint (DCP) into `dcp/` (one .distcp file per rank plus .metadata, resharded on
load); the manifest's `format` says which.

Asynchronous (`checkpoint.async: true`): the state is copied to host memory on the training thread (the
only part that blocks), then a background thread writes the files and commits, synchronising on a gloo
process group of its own (training keeps using the default group; sharing it crashes gloo). At most one
save is in flight; the next save, and the end of training, wait for it.

Nothing non-finite is committed: before writing, the ranks agree that every floating tensor of the state
is finite; if not, the checkpoint is skipped with a one-line message and the previous one stays `latest`.

Fault injection for tests: `kill_at=(rank, step)` (the trainer's `kill_in_checkpoint` argument) makes that
rank write half of its file at that step and SIGKILL itself (first attempt only), i.e. a crash in the
middle of a write.

Trust model: a checkpoint is read with weights_only=True (tensors, numbers, strings and containers; never
pickled code), so loading a checkpoint from someone else cannot run their code. Checksums detect
truncation and corruption, not tampering: whoever can write the folder can change the weights.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import threading

import torch
import torch.distributed as dist

from llama_course.core.checkpoint_read import (  # noqa: F401 (the checkpoint API: reading lives beside)
    STEP_DIR,
    candidates,
    find_latest,
    load_manifest,
    load_model,
    load_rank_state,
    resolve_path,
    resume_point,
    sha256,
    step_dir_name,
    verify,
)


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


def _barrier(world_size: int, group=None) -> None:
    if world_size > 1 and dist.is_initialized():
        dist.barrier(group=group)


def save(root: str, step: int, ctx, engine, config: dict, tokenizer=None, keep: int = 2,
         extra: dict | None = None, kill_at: tuple | None = None) -> str | None:
    """Save a checkpoint of every rank at `step` (collective: every rank calls it). Returns its folder
    (None when the state was not finite and nothing was written)."""
    snap = snapshot(step, ctx, engine, extra)
    if snap is None:
        return None
    return write(root, snap, ctx, config, tokenizer, keep, group=_group(engine), kill_at=kill_at)


def _group(engine):
    """The process group checkpoints of this engine are collective over (None: the default group)."""
    return engine.checkpoint_group()[0]


def snapshot(step: int, ctx, engine, extra: dict | None = None) -> dict | None:
    """Everything a checkpoint holds, copied to host memory (the blocking part of a save; collective).

    None (on every rank) when some rank's state has a NaN or an infinity: a bad state is never written.
    """
    sharded = uses_dcp(engine)
    if sharded:
        engine_state = dcp_state_dict(engine)
    else:
        engine_state = engine.state_dict() if engine.checkpoint_writer() else None
    finite = all_finite(engine_state)
    writers = int(sharded or engine.checkpoint_writer())
    if ctx.world_size > 1 and dist.is_initialized():
        flags = torch.tensor([0 if finite else 1, writers], device=ctx.device)    # NCCL needs it on the GPU
        dist.all_reduce(flags, group=_group(engine))
        finite, writers = not bool(flags[0].item()), int(flags[1].item())
    if not finite:
        if ctx.rank == 0:
            print(f"checkpoint at step {step} not written: the state holds non-finite values "
                  f"(the previous checkpoint stays latest)", file=sys.stderr, flush=True)
        return None
    if writers == 0:        # an engine bug: committing it would leave a checkpoint no rank can resume from
        raise RuntimeError(f"checkpoint at step {step}: no rank of engine '{engine.name}' has training state "
                           "to write")
    full = engine.full_model_state()           # collective for sharded layouts; a dict on rank 0 only
    return {"step": step, "engine_state": _to_host(engine_state), "rng": rng_state(), "extra": extra or {},
            "full": _to_host(full), "format": "dcp" if sharded else "rank_files", "engine": engine.name,
            "writer": sharded or engine.checkpoint_writer()}


def write(root: str, snap: dict, ctx, config: dict, tokenizer=None, keep: int = 2, group=None,
          kill_at: tuple | None = None) -> str:
    """Write a snapshot atomically (collective over `group`, the default group when None)."""
    step = snap["step"]
    final = os.path.join(root, step_dir_name(step))
    tmp = final + ".tmp"
    if ctx.rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier(ctx.world_size, group)
    rank_file = os.path.join(tmp, f"rank_{ctx.rank:05d}.pt")
    state = {"rng": snap["rng"], "step": step, "extra": snap["extra"]}
    if snap["format"] == "dcp":
        import torch.distributed.checkpoint as dcp

        dcp.save(snap["engine_state"], checkpoint_id=os.path.join(tmp, "dcp"), process_group=group)
        _torch_save_maybe_killed(state, rank_file, ctx, step, kill_at)
    elif snap["writer"]:
        state["engine"] = snap["engine_state"]
        _torch_save_maybe_killed(state, rank_file, ctx, step, kill_at)
    if ctx.rank == 0:
        atomic_torch_save(snap["full"], os.path.join(tmp, "model.pt"))
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer.json"))
    _barrier(ctx.world_size, group)
    if ctx.rank == 0:
        files = {}
        for dirpath, _, names in os.walk(tmp):
            for name in names:
                rel = os.path.relpath(os.path.join(dirpath, name), tmp)
                files[rel] = sha256(os.path.join(tmp, rel))
        manifest = {"step": step, "world_size": ctx.world_size, "engine": snap["engine"], "format": snap["format"],
                    "layout": {"dp": ctx.data_shards, "cp": ctx.cp, "tp": ctx.tp, "pp": ctx.pp}, "config": config,
                    "files": dict(sorted(files.items()))}
        atomic_write_text(os.path.join(tmp, "manifest.json"), json.dumps(manifest, indent=1))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_text(os.path.join(root, "latest"), step_dir_name(step) + "\n")
        _prune(root, keep)
    _barrier(ctx.world_size, group)
    return final


class AsyncCheckpointer:
    """Saves in a background thread on its own gloo process group; at most one save in flight.

    Create it on every rank at the same point (new_group is collective). `save` blocks only for the
    snapshot (copy to host memory); `wait` joins the write and re-raises its error, if any.
    """

    def __init__(self, ctx, engine=None):
        self.ctx = ctx
        ranks = engine.checkpoint_group()[1] if engine is not None else None
        if ctx.world_size == 1 or not dist.is_initialized():
            self.group = None
        elif ranks is None:
            self.group = dist.new_group(backend="gloo")
        else:           # a subset (parameter-server workers): only its members take part in creating it
            self.group = dist.new_group(ranks, backend="gloo", use_local_synchronization=True)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.saved: list = []

    def save(self, root, step, engine, config, tokenizer=None, keep=2, extra=None, kill_at=None) -> bool:
        self.wait()
        snap = snapshot(step, self.ctx, engine, extra)
        if snap is None:
            return False

        def run():
            try:
                self.saved.append(write(root, snap, self.ctx, config, tokenizer, keep, group=self.group,
                                        kill_at=kill_at))
            except BaseException as e:  # re-raised on the training thread by wait()
                self.error = e

        self.thread = threading.Thread(target=run, name=f"checkpoint-{step}", daemon=True)
        self.thread.start()
        return True

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def all_finite(state) -> bool:
    """Whether every floating-point tensor in a nested state is free of NaN and infinity."""
    if isinstance(state, torch.Tensor):
        t = state.to_local() if hasattr(state, "to_local") else state
        return not t.is_floating_point() or bool(torch.isfinite(t).all())
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(v) for v in state)
    return True


def _to_host(state):
    """A copy of a nested state on the CPU (tensors cloned; a DTensor keeps its sharding)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True) if not hasattr(state, "to_local") else state.detach().clone()
    if isinstance(state, dict):
        return {k: _to_host(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_host(v) for v in state)
    return state


def _torch_save_maybe_killed(obj, path: str, ctx, step: int, kill_at: tuple | None) -> None:
    if kill_at is not None and ctx.restart_count == 0 and tuple(kill_at) == (ctx.rank, step):
        buf = io.BytesIO()
        torch.save(obj, buf)
        with open(f"{path}.tmp{os.getpid()}", "wb") as f:      # half a file, then the process dies
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
        print(f"kill_in_checkpoint: rank {ctx.rank} killed while writing step {step}",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    atomic_torch_save(obj, path)


# ---- DCP: engines whose model holds DTensors (FSDP2, DTensor tensor parallel) ------------------------

def uses_dcp(engine) -> bool:
    """Whether the engine's parameters are DTensors (then torch.distributed.checkpoint saves them sharded)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return any(isinstance(p, DTensor) for p in engine.base_model.parameters())


def dcp_state_dict(engine) -> dict:
    """{"model", "optimizer"} as DCP state dicts (DTensor shards; resharded on load)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # flattened: optimizer state keyed by parameter name, not by position in param_groups (pipeline stages
    # of one rank hold differently named parameters)
    model_sd, optim_sd = get_state_dict(engine.base_model, engine.optimizer,
                                        options=StateDictOptions(flatten_optimizer_state_dict=True))
    return {"model": model_sd, "optimizer": optim_sd}


def dcp_load(path: str, engine) -> None:
    """Load a DCP checkpoint folder's engine state into the engine (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = dcp_state_dict(engine)
    dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
    set_state_dict(engine.base_model, engine.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"],
                   options=StateDictOptions(flatten_optimizer_state_dict=True))


def restore(path: str, ctx, engine) -> dict:
    """Load a verified checkpoint folder into the engine and RNG; returns {"step", "extra"} (collective)."""
    manifest = load_manifest(path)
    if manifest.get("format") == "dcp":
        dcp_load(path, engine)
        state = torch.load(os.path.join(path, f"rank_{ctx.rank:05d}.pt"), map_location="cpu", weights_only=True)
    else:
        state = load_rank_state(path, engine.checkpoint_source_rank())
        engine.load_state_dict(state["engine"])
    set_rng_state(state["rng"])
    return {"step": state["step"], "extra": state.get("extra", {})}


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


