"""`llama-course train`: the training loop, the same for every layout.

    llama-course train configs/tiny.yaml                          # launches dp x cp x tp x pp gloo processes
    llama-course train configs/tiny.yaml --nproc 1 --set parallel.global_batch_size=8
    torchrun --nproc-per-node 2 -m llama_course train configs/tiny.yaml
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m llama_course train configs/small.yaml                  # many nodes (docs/cluster.md)

Run on its own, `train` checks the config and the data, then starts torch's own launcher
(torch.distributed.run, i.e. torchrun) with the processes the config needs, bound to 127.0.0.1;
`--max-restarts R` restarts every worker after a failure, and workers resume from the newest intact
checkpoint in `--checkpoint-dir`. Under torchrun (RANK/WORLD_SIZE set) it is one worker.

Each step: the sampler picks the global batch of step k (the same sequences whatever the layout), this
rank takes its data shard's share as micro-batches (context parallelism: the engine keeps its chunks of
each sequence), the engine (engine.py) runs forward/backward/sync/step, and rank 0 writes one JSON line
to `--metrics`: step, loss (mean over the global batch), tokens_per_s, step_time_s, lr, grad_norm,
peak_memory_bytes, mfu (and val_loss when validated).

MFU = model FLOPs per token x tokens/s / (devices x peak FLOP/s); model FLOPs count forward + backward
once (6N + 12 l s d per token, simulator/workload.py), the device peak is the dense peak of the run's
precision (for `cpu`, the profile `llama-course bench` measured).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import yaml

from llama_course.compression.model_compression import load_for_training
from llama_course.coordination.fault_tolerance import FailureDetector, inject_nan
from llama_course.coordination.parameter_server import serve, server_ranks
from llama_course.coordination.parameter_server_comm import Heartbeats
from llama_course.core import checkpoint as ckpt
from llama_course.core import wire
from llama_course.core.data import BatchSampler, load_tokens, pack, val_batches
from llama_course.core.distributed import cleanup, init_distributed, launcher_env
from llama_course.core.launch import free_port, torchrun, under_launcher  # noqa: F401  (tests use free_port)
from llama_course.core.model import build_model
from llama_course.core.optimizers import lr_at
from llama_course.core.preflight import banner, check_run
from llama_course.core.profiling import Tracer, write_measured_trace
from llama_course.engine import NonFiniteError, build_engine
from simulator.config import ConfigError, load_config, read_raw
from simulator.hardware import gpu_preset
from simulator.schema import ParallelConfig
from simulator.workload import model_flops_per_token

# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

def peak_flops_per_device(cfg, device_type: str) -> float | None:
    """Dense peak FLOP/s of one device for the run's precision (the simulator's hardware presets)."""
    try:
        if device_type == "cuda":
            name = torch.cuda.get_device_name().lower()
            gpu = next((g for key, g in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100-80gb")) if key in name),
                       None)
            return gpu_preset(gpu).peak(cfg.training.precision) if gpu else None
        return gpu_preset("cpu").peak("fp32")          # the CPU runtime computes in fp32
    except Exception:  # a missing or broken profile must not stop training
        return None


def peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Progress:
    """A tqdm bar on a terminal, plain log lines elsewhere (CI, notebooks' subprocesses, files)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.every = max(1, total // 10)
        self.total = total
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, rec: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                                 mfu=f"{rec['mfu']:.1%}" if rec.get("mfu") is not None else "-")
            self.bar.update(1)
        elif rec["step"] % self.every == 0 or rec["step"] in (1, self.total) or "val_loss" in rec:
            extra = f" val_loss {rec['val_loss']:.4f}" if "val_loss" in rec else ""
            mfu = f" mfu {rec['mfu']:.2%}" if rec.get("mfu") is not None else ""
            print(f"step {rec['step']:>5}/{self.total} loss {rec['loss']:.4f}{extra} lr {rec['lr']:.2e} "
                  f"{rec['tokens_per_s']:,.0f} tok/s{mfu} {rec['step_time_s'] * 1e3:.1f} ms/step", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# one worker
# ---------------------------------------------------------------------------------------------

def run_worker(cfg, metrics_path=None, checkpoint_dir=None, trace_path=None, quiet=False, run: Run | None = None) -> list:
    """Train on this process (one rank of the run). Returns rank 0's metric records. `run` carries the
    rest of the run's settings (trace_steps, kill_in_checkpoint, heartbeats); the paths may be given
    either way."""
    run = run or Run(metrics=metrics_path, checkpoint_dir=checkpoint_dir, trace=trace_path, quiet=quiet)
    metrics_path, checkpoint_dir, trace_path, quiet = run.metrics, run.checkpoint_dir, run.trace, run.quiet
    heartbeats = Heartbeats(run.heartbeat_s, run.dead_after_s)
    p = cfg.parallel
    devices = cfg.replicas * p.tp * p.pp               # training ranks: dp x cp x tp x pp (parameter servers: beyond)
    ctx = init_distributed(cfg.replicas, p.tp, p.pp, mesh_world=devices, cp=p.cp, ep=p.ep)
    # set on success: every rank then meets at a barrier before leaving (a rank killed by faults.kill, which
    # fires on the first attempt, never comes: its survivors must not wait)
    finished, all_alive = False, not (cfg.faults.kill and ctx.restart_count == 0)
    try:
        torch.manual_seed(cfg.training.seed)
        data = load_tokens(cfg)
        train_seqs, val_seqs = pack(data.train, cfg.seq_len), pack(data.val, cfg.seq_len)
        if len(train_seqs) < p.global_batch_size:
            raise ConfigError(f"parallel.global_batch_size: {p.global_batch_size} is more than the "
                              f"{len(train_seqs)} sequences of the corpus")
        sampler = BatchSampler(len(train_seqs), p.global_batch_size, cfg.training.seed)
        val = val_batches(val_seqs, p.micro_batch_size, cfg.training.eval_batches)
        sync = torch.cuda.synchronize if ctx.device.type == "cuda" else None
        tracer = Tracer(enabled=bool(trace_path), rank=ctx.rank, sync=sync)
        model = build_model(cfg)
        if cfg.training.init_from:      # fine-tune a checkpoint, e.g. a compressed one (model_compression.py)
            model = load_for_training(cfg.training.init_from, cfg)
        if ctx.rank in server_ranks(cfg):              # a parameter server: serve the workers, train nothing
            serve(cfg, ctx, model.to(ctx.device), heartbeats)
            finished = all_alive
            return []
        engine = build_engine(cfg, ctx, model, tracer, heartbeats)

        start = 0
        if checkpoint_dir:
            latest = ckpt.resume_point(checkpoint_dir, log=_log_main(ctx))
            if latest is not None:
                start = ckpt.restore(latest, ctx, engine)["step"]
                if ctx.is_main and not quiet:
                    print(f"resumed from {latest} at step {start}", flush=True)
        # fault tolerance (fault_tolerance.py): background saves, naming a missing rank, injected NaN
        saver = ckpt.AsyncCheckpointer(ctx, engine) if checkpoint_dir and cfg.checkpoint.async_save else None
        detector = FailureDetector(ctx) if ctx.world_size > 1 else None

        flops_per_token = model_flops_per_token(cfg.model, cfg.seq_len)
        peak = peak_flops_per_device(cfg, ctx.device.type)
        records = []
        metrics_file = open_metrics(metrics_path, start) if (metrics_path and ctx.is_main) else None
        progress = Progress(cfg.training.steps, start, enabled=ctx.is_main and not quiet)
        kills = [k for k in cfg.faults.kill if k["rank"] == ctx.rank]
        every = cfg.checkpoint.every_steps
        kill_at = tuple(run.kill_in_checkpoint) if run.kill_in_checkpoint else None
        wire.install()
        comm_log = []                 # this rank's bytes by kind, one dict per step (docs/design.md: comm_bytes)
        try:
            for step in range(start, cfg.training.steps):
                n = step + 1
                if ctx.restart_count == 0 and any(k["step"] == n for k in kills):
                    print(f"faults.kill: rank {ctx.rank} killed at step {n}", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                with wire.recording() as fetch_log:     # bytes this rank hands to torch.distributed this step
                    batches = engine.batches_for_step(sampler, train_seqs, step)
                lr = lr_at(step, cfg)
                if trace_path and step <= cfg.training.steps - run.trace_steps:
                    tracer.clear()            # keep the last trace_steps steps: steady state, small files
                if sync:
                    sync()
                t0 = time.perf_counter()
                if detector:
                    detector.arrive(n)
                with inject_nan(engine, n == cfg.faults.nan_step), wire.recording() as step_log:
                    try:
                        out = engine.train_step(batches, lr)
                    except RuntimeError as e:
                        if detector is None or isinstance(e, NonFiniteError):
                            raise
                        raise detector.failure(n, e) from e
                if sync:
                    sync()
                dt = time.perf_counter() - t0
                tracer.step(t0, dt)
                comm_log.append({k: fetch_log.bytes_by_kind()[k] + v for k, v in step_log.bytes_by_kind().items()})
                tokens_s = cfg.tokens_per_step / dt
                rec = {"step": n, "loss": out["loss"], "tokens_per_s": tokens_s, "step_time_s": dt, "lr": lr,
                       "grad_norm": out["grad_norm"], "peak_memory_bytes": peak_memory_bytes(ctx.device),
                       "mfu": flops_per_token * tokens_s / (devices * peak) if peak else None,
                       "comm_bytes": comm_log[-1]}
                if out.get("skipped"):
                    rec["skipped"] = True
                for key in ("staleness", "bytes_sent", "torn_pulls", "loss_scale", "router_aux_loss"):
                    if key in out:
                        rec[key] = out[key]
                if (cfg.training.eval_every and n % cfg.training.eval_every == 0) or n == cfg.training.steps:
                    rec["val_loss"] = engine.evaluate(val)
                if every and n % every == 0 or checkpoint_dir and n == cfg.training.steps:
                    if saver:
                        saver.save(checkpoint_dir, n, engine, cfg.to_dict(), data.tokenizer, cfg.checkpoint.keep,
                                   kill_at=kill_at)
                    elif checkpoint_dir:
                        ckpt.save(checkpoint_dir, n, ctx, engine, cfg.to_dict(), data.tokenizer, cfg.checkpoint.keep,
                                  kill_at=kill_at)
                if ctx.is_main:
                    records.append(rec)
                    if metrics_file:
                        metrics_file.write(json.dumps(rec) + "\n")
                        metrics_file.flush()
                    progress.update(rec)
            if saver:
                saver.wait()
        finally:
            progress.close()
            if metrics_file:
                metrics_file.close()
        engine.close()                                # a parameter-server worker says goodbye to the servers
        if trace_path:
            write_measured_trace(trace_path, ctx, tracer, comm_log)
        finished = all_alive
        return records
    finally:
        cleanup(barrier=finished)      # a rank that failed leaves at once: waiting for it would hang


def open_metrics(path: str, start: int):
    """The metrics file for appending after step `start`: lines of steps a crash made us redo are dropped."""
    kept = []
    if start and os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, "w")
    f.writelines(kept)
    return f


def _log_main(ctx):
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if ctx.is_main else (lambda msg: None)


# ---------------------------------------------------------------------------------------------
# launching: one path for the CLI, train(), compare and bench (core/launch.py starts the processes)
# ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a training run needs besides its config. The launcher writes it, with the resolved
    config, into a run file the workers read (`python -m llama_course.trainer --run-file PATH`)."""

    metrics: str | None = None
    """One JSON line per step (rank 0)."""
    checkpoint_dir: str | None = None
    """Save checkpoints here and resume from the newest intact one."""
    trace: str | None = None
    """Chrome trace of the measured steps."""
    trace_steps: int = 3
    """The trace keeps the last this-many steps (compare asks for the second half of the run)."""
    quiet: bool = False
    """No progress bar or log lines."""
    max_restarts: int = 0
    """Restart every worker after a failure, up to this many times (torchrun --max-restarts)."""
    kill_in_checkpoint: list | None = None
    """[rank, step]: that rank writes half of its checkpoint file at that step and dies (tests)."""
    heartbeat_s: float = 0.5
    """Parameter-server workers beat this often."""
    dead_after_s: float = 5.0
    """A server declares a worker silent this long dead."""


def resolve_config(config, overrides=(), nproc: int | None = None):
    """The validated config of a run: a YAML path, a dict or None (defaults), `k=v` overrides, and
    `--nproc` (data-parallel workers: cluster.num_gpus, or parallel.dp plus the parameter servers)."""
    overrides = list(overrides)
    if nproc is not None:
        if nproc < 1:
            raise ConfigError(f"--nproc: must be positive, got {nproc}")
        # read as written, not validated: the layout before --nproc may well be invalid (its dp, say)
        written = read_raw(config, overrides).get("parallel")     # not a mapping: load_config says so below
        written = written if isinstance(written, dict) else {}
        if written.get("strategy", ParallelConfig.strategy) == "collective":
            overrides += [f"cluster.num_gpus={nproc}", "parallel.dp=null"]
        else:
            num_servers = written.get("num_servers", ParallelConfig.num_servers)
            overrides += [f"parallel.dp={nproc - num_servers}", "cluster.num_gpus=null"]
    return load_config(config, overrides)


def launch_run(cfg, run: Run) -> int:
    """Train `cfg`: in this process when it needs one rank (and no restarts), else on cfg.world_size
    workers started by torch's launcher, which read the config and `run` from a run file."""
    load_tokens(cfg)                          # check data.corpus and build the tokenizer cache once, here
    if cfg.world_size == 1 and not run.max_restarts:
        run_worker(cfg, run=run)
        return 0
    with tempfile.TemporaryDirectory(prefix="llama-course-run-") as tmp:
        path = os.path.join(tmp, "run.yaml")
        with open(path, "w") as f:            # YAML keeps faults.slow's integer keys
            yaml.safe_dump({"config": cfg.to_dict(), "run": asdict(run)}, f)
        code = torchrun(["-m", "llama_course.trainer", "--run-file", path], cfg.world_size, run.max_restarts,
                        {**os.environ, **launcher_env(cfg.world_size)})     # fewer GPUs than processes: CPU
    if code:
        print(f"error: training failed (exit code {code}); see the worker output above", file=sys.stderr)
    return code


def worker_main(cfg, run: Run) -> int:
    """One launched worker: train, one line per failed rank (LLAMA_COURSE_DEBUG=1 for the traceback)."""
    try:
        run_worker(cfg, run=run)
    except ConfigError:
        raise
    except Exception as e:
        if os.environ.get("LLAMA_COURSE_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"rank {os.environ.get('RANK')}: {type(e).__name__}: {first[:300]}", file=sys.stderr, flush=True)
        return 1
    # The run is complete: metrics closed, checkpoints fsynced, process group destroyed. Skip the
    # interpreter teardown: there torch's RPC agent and gloo's threads can abort the process ("terminate
    # called without an active exception", seen about once in 6-20 four-rank runs), which would fail a
    # finished run and make torchrun restart it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cli(args) -> int:
    """`llama-course train`: launch the run, or be one worker of it under torchrun."""
    cfg = resolve_config(args.config, args.overrides, args.nproc)
    run = Run(metrics=_absolute(args.metrics), checkpoint_dir=_absolute(args.checkpoint_dir),
              trace=_absolute(args.trace), trace_steps=args.trace_steps, quiet=args.quiet,
              max_restarts=args.max_restarts)
    if under_launcher():                      # torchrun -m llama_course train CONFIG (many nodes)
        if os.environ.get("RANK") == "0" and not args.quiet:
            print(banner(cfg, int(os.environ["WORLD_SIZE"])), flush=True)
        return worker_main(cfg, run)
    return checked_launch(cfg, run, getattr(args, "fresh", False), getattr(args, "allow_noop", False))


def checked_launch(cfg, run: Run, fresh: bool = False, allow_noop: bool = False) -> int:
    """core/preflight's checks (one-line errors before any process starts; `fresh` sets old checkpoints
    aside), the banner, then launch_run. The CLI and train() both start here."""
    start = check_run(cfg, run.metrics, run.trace, run.checkpoint_dir, fresh, allow_noop)
    if start >= cfg.training.steps:           # --allow-noop
        print(f"nothing to train: {run.checkpoint_dir} is at step {start}, training.steps is {cfg.training.steps}")
        return 0
    if not run.quiet:
        print(banner(cfg, cfg.world_size, start), flush=True)
    return launch_run(cfg, run)


def train(config=None, overrides=(), nproc=None, metrics=None, checkpoint_dir=None, quiet=True,
          max_restarts=0, trace=None, trace_steps: int = 3, kill_in_checkpoint=None) -> list:
    """Python entry point (labs, compare): train like the CLI and return the per-step records of rank 0.
    `config`: a YAML path, a dict or None; values pass straight to the launcher (no command line)."""
    cfg = resolve_config(config, overrides, nproc)
    if metrics is None:
        fd, metrics = tempfile.mkstemp(prefix="llama-course-metrics-", suffix=".jsonl")
        os.close(fd)
    run = Run(metrics=_absolute(metrics), checkpoint_dir=_absolute(checkpoint_dir), trace=_absolute(trace),
              trace_steps=trace_steps, quiet=quiet, max_restarts=max_restarts,
              kill_in_checkpoint=list(kill_in_checkpoint) if kill_in_checkpoint else None)
    code = checked_launch(cfg, run)
    if code:
        raise RuntimeError(f"training failed with exit code {code}")
    with open(metrics) as f:
        return [json.loads(line) for line in f if line.strip()]


def _absolute(path) -> str | None:
    return os.path.abspath(path) if path else None


def main(argv=None) -> int:
    """`python -m llama_course.trainer --run-file PATH`: one worker started by `launch_run`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--run-file":
        print("usage: python -m llama_course.trainer --run-file PATH (written by llama-course train)", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        spec = yaml.safe_load(f)
    return worker_main(load_config(spec["config"]), Run(**spec["run"]))


if __name__ == "__main__":
    sys.exit(main())
