"""`llama-course train`: the training loop, the same for every layout.

    llama-course train configs/tiny.yaml                          # launches dp x tp x pp gloo processes
    llama-course train configs/tiny.yaml --nproc 1 --set parallel.global_batch_size=8
    torchrun --nproc-per-node 2 -m llama_course train configs/tiny.yaml
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m llama_course train configs/small.yaml                  # many nodes (docs/cluster.md)

Run on its own, `train` checks the config and the data, then starts torch's own launcher
(torch.distributed.run, i.e. torchrun) with the processes the config needs, bound to 127.0.0.1;
`--max-restarts R` restarts every worker after a failure, and workers resume from the newest intact
checkpoint in `--checkpoint-dir`. Under torchrun (RANK/WORLD_SIZE set) it is one worker.

Each step: the sampler picks the global batch of step k (the same sequences whatever the layout), this
rank takes its dp share as micro-batches, the engine (engine.py) runs forward/backward/sync/step, and
rank 0 writes one JSON line to `--metrics`: step, loss (mean over the global batch), tokens_per_s,
step_time_s, lr, grad_norm, peak_memory_bytes, mfu (and val_loss when validated).

MFU = model FLOPs per token x tokens/s / (devices x peak FLOP/s); model FLOPs count forward + backward
once (6N + 12 l s d per token, simulator/workload.py), the device peak is the dense peak of the run's
precision (for `cpu`, the profile `llama-course bench` measured).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import warnings

from llama_course.core import wire
from llama_course.core.optimizers import lr_at  # noqa: F401  (the schedule lives with the optimizers)
from simulator.config import ConfigError, load_config

# ---------------------------------------------------------------------------------------------
# learning rate
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

def peak_flops_per_device(cfg, device_type: str) -> float | None:
    """Dense peak FLOP/s of one device for the run's precision (the simulator's hardware presets)."""
    try:
        from simulator.hardware import gpu_preset

        if device_type == "cuda":
            import torch

            name = torch.cuda.get_device_name().lower()
            gpu = next((g for key, g in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100-80gb")) if key in name),
                       None)
            return gpu_preset(gpu).peak(cfg.training.precision) if gpu else None
        return gpu_preset("cpu").peak("fp32")          # the CPU runtime computes in fp32
    except Exception:  # a missing or broken profile must not stop training
        return None


def peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        import torch

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

TRACE_STEPS = int(os.environ.get("LLAMA_COURSE_TRACE_STEPS", "3"))
"""`--trace` records the last this-many steps of the run."""


def run_worker(cfg, metrics_path=None, checkpoint_dir=None, trace_path=None, quiet=False) -> list:
    """Train on this process (one rank of the run). Returns rank 0's metric records."""
    import torch

    from llama_course.coordination.fault_tolerance import FailureDetector, inject_nan
    from llama_course.core import checkpoint as ckpt
    from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack, val_batches
    from llama_course.core.distributed import cleanup, init_distributed
    from llama_course.core.model import build_model
    from llama_course.core.profiling import Tracer, write_trace
    from llama_course.engine import NonFiniteError, build_engine
    from simulator.workload import model_flops_per_token

    p = cfg.parallel
    ctx = init_distributed(p.dp, p.tp, p.pp, mesh_world=p.dp * p.tp * p.pp)     # parameter servers: ranks beyond
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
            from llama_course.compression.model_compression import load_for_training

            model = load_for_training(cfg.training.init_from, cfg)
        engine = build_engine(cfg, ctx, model, tracer)
        if getattr(engine, "is_server", False):      # parameter server rank: serve the workers, train nothing
            engine.run_server()
            return []

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
        devices = p.dp * p.tp * p.pp
        records = []
        metrics_file = open_metrics(metrics_path, start) if (metrics_path and ctx.is_main) else None
        progress = Progress(cfg.training.steps, start, enabled=ctx.is_main and not quiet)
        kills = [k for k in cfg.faults.kill if k["rank"] == ctx.rank]
        every = cfg.checkpoint.every_steps
        trace_steps = int(os.environ.get("LLAMA_COURSE_TRACE_STEPS", TRACE_STEPS))   # compare sets it per run
        wire.install()
        comm_log = []                 # this rank's bytes by kind, one dict per step (docs/design.md: comm_bytes)
        try:
            for step in range(start, cfg.training.steps):
                n = step + 1
                if ctx.restart_count == 0 and any(k["step"] == n for k in kills):
                    print(f"faults.kill: rank {ctx.rank} killed at step {n}", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                with wire.recording() as fetch_log:     # bytes this rank hands to torch.distributed this step
                    batches = engine.batches_for_step(sampler, train_seqs, step) if hasattr(engine, "batches_for_step") \
                        else [get_batch(train_seqs, idx) for idx in sampler.shard(step, ctx.dp_rank, ctx.dp, p.micro_batch_size)]
                lr = lr_at(step, cfg)
                if trace_path and step <= cfg.training.steps - trace_steps:
                    tracer.clear()            # keep the last TRACE_STEPS steps: steady state, small files
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
                comm_log.append({k: fetch_log.bytes_by_kind()[k] + v for k, v in step_log.bytes_by_kind().items()})
                tokens_s = cfg.tokens_per_step / dt
                rec = {"step": n, "loss": out["loss"], "tokens_per_s": tokens_s, "step_time_s": dt, "lr": lr,
                       "grad_norm": out["grad_norm"], "peak_memory_bytes": peak_memory_bytes(ctx.device),
                       "mfu": flops_per_token * tokens_s / (devices * peak) if peak else None,
                       "comm_bytes": comm_log[-1]}
                if out.get("skipped"):
                    rec["skipped"] = True
                for key in ("staleness", "bytes_sent", "torn_pulls"):
                    if key in out:
                        rec[key] = out[key]
                if (cfg.training.eval_every and n % cfg.training.eval_every == 0) or n == cfg.training.steps:
                    rec["val_loss"] = engine.evaluate(val)
                if every and n % every == 0 or checkpoint_dir and n == cfg.training.steps:
                    if saver:
                        saver.save(checkpoint_dir, n, engine, cfg.to_dict(), data.tokenizer, cfg.checkpoint.keep)
                    elif checkpoint_dir:
                        ckpt.save(checkpoint_dir, n, ctx, engine, cfg.to_dict(), data.tokenizer, cfg.checkpoint.keep)
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
        if hasattr(engine, "close"):                  # parameter server worker: say goodbye to the servers
            engine.close()
        if trace_path:
            _write_traces(trace_path, ctx, tracer, write_trace, comm_log)
        return records
    finally:
        cleanup()


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


def _write_traces(path, ctx, tracer, write_trace, comm_log: list) -> None:
    """Every training rank's spans in one Chrome trace; its metadata holds `comm_bytes`,
    `[rank][step] -> bytes by kind`, as the wire recorder counted them (compare reads it)."""
    import torch.distributed as dist

    events, comm = tracer.events, [comm_log]
    # the ranks that train: everyone, or the workers of a parameter-server run (servers have returned)
    group = ctx.dp_group if ctx.world_size > ctx.dp * ctx.tp * ctx.pp else None
    size = dist.get_world_size(group) if ctx.world_size > 1 else 1
    if size > 1:
        gathered = [None] * size
        with warnings.catch_warnings():          # torch warns about its own gloo backend object here
            warnings.simplefilter("ignore", UserWarning)
            dist.all_gather_object(gathered, (events, comm_log), group=group)
        events = [e for rank_events, _ in gathered for e in rank_events]
        comm = [rank_comm for _, rank_comm in gathered]
    if ctx.is_main:
        write_trace(path, events, {"source": "measured", "comm_bytes": comm})


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def under_launcher() -> bool:
    """True inside a torchrun-started worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def launch(argv: list, nproc: int, max_restarts: int = 0, env: dict | None = None) -> int:
    """Start `nproc` workers of `python -m llama_course <argv>` with torch's own launcher on 127.0.0.1
    (through fault_tolerance.torchrun_on_loopback, so its stores listen on 127.0.0.1 only, not on every
    interface as TCPStore does by default)."""
    cmd = [sys.executable, "-m", "llama_course.coordination.fault_tolerance", "--torchrun", "--nnodes=1", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1", "--monitor-interval=0.2",
           "-m", "llama_course", *argv]
    run_env = dict(os.environ if env is None else env)
    run_env["LLAMA_COURSE_LAUNCHED"] = "1"            # the launcher printed the banner
    run_env.setdefault("OMP_NUM_THREADS", "1")
    run_env.setdefault("LOGLEVEL", "ERROR")
    run_env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    return subprocess.call(cmd, env=run_env)


def cli(args) -> int:
    overrides = list(args.overrides)
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f"--nproc: must be positive, got {args.nproc}")
        cfg0 = load_config(args.config, overrides)
        if cfg0.parallel.strategy == "collective":
            overrides += [f"cluster.num_gpus={args.nproc}", "parallel.dp=null"]
        else:
            overrides += [f"parallel.dp={args.nproc - cfg0.parallel.num_servers}", "cluster.num_gpus=null"]
    cfg = load_config(args.config, overrides)
    if under_launcher():
        if os.environ.get("RANK") == "0" and not os.environ.get("LLAMA_COURSE_LAUNCHED") and not args.quiet:
            print(banner(cfg, int(os.environ["WORLD_SIZE"])), flush=True)
        try:
            run_worker(cfg, args.metrics, args.checkpoint_dir, getattr(args, "trace", None), args.quiet)
        except ConfigError:
            raise
        except Exception as e:      # one line per failed rank; LLAMA_COURSE_DEBUG=1 for the traceback
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
    from llama_course.core.data import load_tokens
    from llama_course.core.distributed import launcher_env

    load_tokens(cfg)                          # check data.corpus and build the tokenizer cache once, here
    nproc = cfg.world_size
    start = preflight(cfg, args)
    if start >= cfg.training.steps:           # --allow-noop
        print(f"nothing to train: {args.checkpoint_dir} is at step {start}, training.steps is {cfg.training.steps}")
        return 0
    if not args.quiet:
        print(banner(cfg, nproc, start), flush=True)
    if nproc == 1 and not args.max_restarts:
        run_worker(cfg, args.metrics, args.checkpoint_dir, getattr(args, "trace", None), args.quiet)
        return 0
    argv = ["train", os.path.abspath(args.config) if args.config else None]
    argv = [a for a in argv if a]
    for item in overrides:
        argv += ["--set", item]
    for flag, value in (("--metrics", args.metrics), ("--checkpoint-dir", args.checkpoint_dir),
                        ("--trace", getattr(args, "trace", None))):
        if value:
            argv += [flag, os.path.abspath(value)]
    if args.quiet:
        argv.append("--quiet")
    code = launch(argv, nproc, args.max_restarts, {**os.environ, **launcher_env(nproc)})   # fewer GPUs: CPU
    if code:
        print(f"error: training failed (exit code {code}); see the worker output above", file=sys.stderr)
    return code


def banner(cfg, nproc: int, start: int = 0) -> str:
    """The one line `train` prints before the first step: model, layout, engine, device, processes, steps."""
    import torch

    from llama_course.engine import engine_name
    from simulator.workload import count_params

    p, m = cfg.parallel, cfg.model
    cuda = torch.cuda.is_available() and os.environ.get("LLAMA_COURSE_DEVICE", "cuda") == "cuda"
    device = f"cuda ({torch.cuda.get_device_name()}, nccl)" if cuda else "cpu (gloo)"
    servers = f" + {p.num_servers} parameter server(s)" if p.strategy == "parameter_server" else ""
    steps = f"steps {start + 1}-{cfg.training.steps}" + (f" (resuming at step {start})" if start else "")
    return (f"train: {m.arch} {m.n_layers} layers x dim {m.dim} ({count_params(m, cfg.seq_len) / 1e6:.2f}M "
            f"parameters) | layout dp {p.dp} x tp {p.tp} x pp {p.pp}{servers} | engine {engine_name(cfg)} "
            f"({p.implementation}) | device {device} | {nproc} process{'es' if nproc > 1 else ''} | {steps}")


def preflight(cfg, args) -> int:
    """core/preflight.check_run for the CLI's arguments: the step the run resumes from (one-line errors)."""
    from llama_course.core.preflight import check_run

    return check_run(cfg, args.metrics, getattr(args, "trace", None), args.checkpoint_dir,
                     getattr(args, "fresh", False), getattr(args, "allow_noop", False))


def train(config=None, overrides=(), nproc=None, metrics=None, checkpoint_dir=None, quiet=True,
          max_restarts=0, trace=None) -> list:
    """Python entry point (labs): train like the CLI and return the per-step records of rank 0."""
    import argparse
    import tempfile

    from llama_course.commands.cli import build_parser

    tmp = None
    if metrics is None:
        tmp = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)
        metrics = tmp.name
    config_path = config
    if isinstance(config, dict):
        import yaml

        fd = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(config, fd)
        fd.close()
        config_path = fd.name
    argv = ["train"] + ([str(config_path)] if config_path else []) + [x for o in overrides for x in ("--set", o)]
    argv += ["--metrics", str(metrics), "--max-restarts", str(max_restarts)]
    if nproc:
        argv += ["--nproc", str(nproc)]
    if checkpoint_dir:
        argv += ["--checkpoint-dir", str(checkpoint_dir)]
    if trace:
        argv += ["--trace", str(trace)]
    if quiet:
        argv.append("--quiet")
    args: argparse.Namespace = build_parser().parse_args(argv)
    code = cli(args)
    if code:
        raise RuntimeError(f"training failed with exit code {code}")
    with open(metrics) as f:
        return [json.loads(line) for line in f if line.strip()]
