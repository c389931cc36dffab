"""`llama-course bench [--json] [--out FILE] [--quick] [--repeat N]`: measure this machine, write the `cpu` profile.

    llama-course bench                 # about a minute; writes ~/.cache/llama-course/cpu_profile.json
    llama-course bench --repeat 3 --out simulator/profiles/cpu.json   # the shipped reference profile: medians
    llama-course simulate configs/tiny.yaml   # `cluster.gpu: cpu` now predicts with what was measured

What it measures, each the median of several repeats (one thread per process, as training ranks run):

- matmul throughput: square fp32 products (the machine's practical peak) and the forward + backward
  products at the `tiny` and `small` models' real shapes (what a rank really reaches);
- memory bandwidth: a large tensor copy (bytes read + written per second);
- kernel overhead: the time of an element-wise op on a tiny tensor (launch + dispatch cost);
- attention: PyTorch's fused causal attention alone, forward and backward, at a grid of sequence lengths and
  head dims (`calibration.ATTENTION_SHAPES`), fitted as a fixed cost plus a cost per score element;
- gloo: point-to-point latency (ping-pong of 4 bytes / 2) and bandwidth (16 MiB), all_reduce latency and
  bus bandwidth (nccl-tests' busbw = algbw x 2(n-1)/n) with 2 and 4 processes, and the all-reduce curves
  the simulator uses (gloo's and the course's ring, 4 B to 16 MiB): in situ, each issued right after ~1.5 ms
  of compute as training issues them, and back to back (means over bursts); and a parameter server's round
  trip over torch RPC with 1 and 2 workers;
- core sharing: 1, 2 and 4 processes computing the tiny model at once; k processes get k x t1 / tk cores'
  worth of compute (`effective_cores`; 4 on the 2-core reference VM get ~1.8, not 2), and, started
  together, the slowest of them falls `straggle[k]` behind their mean;
- process launch: spawning 2 processes that join a process group and exit;
- the real model: one micro-batch's forward + backward of the `tiny` and `small` LLaMA at two micro-batch
  sizes, timed inside real train steps (fresh batches, the optimizer in between), and the rest of a step (gradient norm, clipping, the course AdamW), from which two
  numbers of the simulator's `cpu` model are fitted once for the machine (`simulator.calibration`'s
  `fit_compute`, which also derives the profile and prints the summary): the share of the
  matmul peak that a rank's kernels reach and the fixed cost per simulated kernel (eager PyTorch runs ~4
  real ops, with their dispatch and autograd bookkeeping, for each kernel the simulator counts), and the
  optimizer's cost per parameter tensor and per element.

Compute is timed in CPU seconds of the measuring thread (`time.thread_time`), not wall time: other
processes on the machine (tests, other users) then stretch the measurement little, and the profile
describes the machine, not its load at the time. Collectives are timed in wall time (they wait), taking
the median of many repeats.

The measurements that need several processes live in bench_processes.py; the arithmetic that turns the
raw numbers into a profile (the fit, the tables, core sharing) in simulator/calibration.py, torch-free.
`--out FILE` is checked before measuring (a folder, an empty or non-JSON file: one line, exit 2), and the
profile is written to a temporary file renamed over FILE; if writing still fails, the measurements are
saved beside the working directory and the error says where.

The profile keys are those `simulator.hardware.cpu_from_profile` reads. A GPU is measured and its preset
calibrated by `scripts/gpu_check.sh` (llama_course/commands/gpu_check.py), not here.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from llama_course.commands.bench_processes import _noop, cpu_time, launched, median_time
from simulator.calibration import (  # noqa: F401  (MODEL_POINTS, SPEED_POINT: part of what bench measures)
    ATTENTION_SHAPES,
    MODEL_POINTS,
    SPEED_POINT,
    derive_profile,
    median_raw,
    predicted_forward_backward,
    report_lines,
)
from simulator.config_checks import check_writable


def matmul_gflops(n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / cpu_time(lambda: a @ b, repeats) / 1e9


def model_shape_gflops(preset: str, tokens: int, repeats: int = 5) -> float:
    """Forward + backward of one block's matmuls at a model's shapes (what training ranks multiply)."""
    import torch

    from simulator.config import load_config

    m = load_config({"model": {"preset": preset}}).model
    kv = m.n_kv_heads * m.dim // m.n_heads
    shapes = [(m.dim, m.dim), (m.dim, kv), (m.dim, kv), (m.dim, m.dim), (m.dim, m.ffn_dim), (m.dim, m.ffn_dim),
              (m.ffn_dim, m.dim)]
    ws = [torch.randn(i, o, requires_grad=True) for i, o in shapes]
    xs = [torch.randn(tokens, i, requires_grad=True) for i, _ in shapes]

    def step():
        for x, w in zip(xs, ws):
            (x @ w).sum().backward()

    flops = sum(3 * 2 * tokens * i * o for i, o in shapes)
    return flops / cpu_time(step, repeats) / 1e9


def copy_gbps(n_bytes: int = 64 << 20, repeats: int = 5) -> float:
    import torch

    a = torch.empty(n_bytes // 4)
    b = torch.randn(n_bytes // 4)
    return 2 * n_bytes / cpu_time(lambda: a.copy_(b), repeats) / 1e9


def kernel_overhead_us(repeats: int = 2000) -> float:
    import torch

    x = torch.randn(16)

    def run():
        for _ in range(repeats):
            x.add_(1.0)

    return cpu_time(run, 5) / repeats * 1e6


def attention_times(bh: int, seq_len: int, head_dim: int, repeats: int = 7) -> dict:
    """CPU seconds of PyTorch's fused causal attention alone (F.scaled_dot_product_attention, as the model
    calls it), forward and backward, on (bh, seq_len, head_dim) queries, keys and values: medians."""
    import torch
    import torch.nn.functional as F

    q, k, v = (torch.randn(1, bh, seq_len, head_dim, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, bh, seq_len, head_dim)
    fwd, bwd = [], []
    for i in range(repeats + 2):                     # two warm-ups
        t0 = time.thread_time()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        t1 = time.thread_time()
        out.backward(grad)
        t2 = time.thread_time()
        if i >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return {"bh": bh, "seq_len": seq_len, "head_dim": head_dim, "forward_s": statistics.median(fwd),
            "backward_s": statistics.median(bwd)}


def model_step_times(preset: str, seq_len: int, micro_batch: int, repeats: int = 5, wall: bool = False) -> dict:
    """CPU seconds of one micro-batch's forward + backward and of the rest of a single-process step
    (`wall`: wall-clock seconds instead, as a training rank's step is timed)."""
    import torch

    from llama_course.core.distributed import Context
    from llama_course.core.model import build_model
    from llama_course.engine import Engine
    from simulator.config import load_config

    cfg = load_config({"model": {"preset": preset}, "seq_len": seq_len, "cluster": {"gpu": "cpu", "num_gpus": 1},
                       "parallel": {"micro_batch_size": micro_batch, "global_batch_size": micro_batch,
                                    "implementation": "course"}, "training": {"precision": "fp32"}})
    engine = Engine(cfg, Context(), build_model(cfg))
    # as training runs it: a fresh batch every step and the optimizer between forward-backwards (whose
    # state traffic evicts the caches; a loop of forward-backwards alone on one batch runs 10-20% faster)
    inner, fb_times = engine.forward_backward, []

    clock = time.perf_counter if wall else time.thread_time

    def timed(batches):
        t = clock()
        out = inner(batches)
        fb_times.append(clock() - t)
        return out

    engine.forward_backward = timed

    def step():
        batch = [(torch.randint(cfg.model.vocab_size, (micro_batch, seq_len)),
                  torch.randint(cfg.model.vocab_size, (micro_batch, seq_len)))]
        engine.train_step(batch, 1e-4)

    step_s = median_time(step, repeats, clock=clock)
    fb = statistics.median(fb_times[2:])                    # the warm-up steps are not counted
    params = list(engine.base_model.parameters())
    return {"preset": preset, "seq_len": seq_len, "micro_batch": micro_batch, "forward_backward_s": fb,
            "rest_s": max(0.0, step_s - fb), "params": sum(p.numel() for p in params), "tensors": len(params)}


def speed_factor(hw=None, repeats: int = 9, processes: int = 1) -> dict:
    """How fast this machine computes now against its profile: the tiny model's forward-backward (as
    `bench` fitted the profile on), one thread per process, timed in wall seconds.
    {"measured_s", "predicted_s", "speed_factor": measured / predicted, "processes"} (above 1: slower
    than profiled).

    processes = 1: one process, inside train steps. processes = k > 1: k processes started as training
    starts them, computing at once and started together each step; measured_s is the slowest rank's time
    (what a synchronizing step waits for) and predicted_s the profile's for it (one of k processes sharing
    the cores, `Hardware.sharing_slowdown(k)`, times the slowest's lag, `straggle_factor(k)`), so the
    factor also carries how the cores are shared now. That is what a k-process run's compute meets: on the
    2-core reference VM two processes computed 1.04x slower than one when profiled and ~1.5x slower on
    2026-12-06, and a one-process probe missed it (the demo's prediction was 29-33% too fast).

    When the k processes cannot be launched, the one-process probe answers, with "fallback" saying why.

    A shared machine's speed drifts (on the 2-core reference VM the same forward-backward measured 23 ms
    and 28 ms a quarter of an hour apart); `compare --calibrate` and the demo run this before and after
    training."""
    from simulator.hardware import gpu_preset

    hw = hw or gpu_preset("cpu")
    if processes > 1:
        try:
            measured = launched("speed_worker", processes, repeats, timeout=120)[0]
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:     # launching failed: one process
            out = speed_factor(hw, repeats)
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            out["fallback"] = f"{processes} processes could not be launched ({why})"
            return out
        point = dict(zip(("preset", "seq_len", "micro_batch"), SPEED_POINT))
        predicted = (predicted_forward_backward(point, hw) * hw.sharing_slowdown(processes)
                     * hw.straggle_factor(processes))
        return {"measured_s": measured, "predicted_s": predicted, "speed_factor": measured / predicted,
                "processes": processes}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        point = model_step_times(*SPEED_POINT, repeats=repeats, wall=True)
    finally:
        torch.set_num_threads(threads)
    predicted = predicted_forward_backward(point, hw)
    return {"measured_s": point["forward_backward_s"], "predicted_s": predicted,
            "speed_factor": point["forward_backward_s"] / predicted, "processes": 1}


def default_profile_path() -> str:
    from simulator.hardware import user_cpu_profile_path

    return user_cpu_profile_path()


def measure(quick: bool = False, progress: bool = True, repeat: int = 1) -> dict:
    """Every measurement of the machine, as a dict (raw numbers and the derived profile); with repeat > 1
    the whole bench runs that many times and every raw number is the median over the runs."""
    import torch

    raws = [_measure_raw(quick, progress, f"bench {i + 1}/{repeat}" if repeat > 1 else "bench")
            for i in range(max(1, repeat))]
    raw = median_raw(raws)
    raw["repeats"] = len(raws)
    return {"raw": raw, "profile": derive_profile(raw, torch.__version__, os.cpu_count())}


def _measure_raw(quick: bool, progress: bool, desc: str) -> dict:
    import torch
    from tqdm import tqdm

    from llama_course.core.testing import spawn

    torch.set_num_threads(1)
    steps = ["matmul", "model shapes", "memory", "kernel overhead", "attention", "model steps", "core sharing", "rank lag",
             "gloo 2 processes", "gloo 4 processes", "rpc 1 and 2 workers", "process launch"]
    terminal = progress and sys.stderr.isatty()     # a bar on a terminal, plain lines elsewhere
    bar = tqdm(steps, desc=desc, disable=not terminal, file=sys.stderr)
    raw: dict = {}
    for i, name in enumerate(bar):
        bar.set_postfix_str(name)
        if progress and not terminal:
            print(f"{desc}: {name} ({i + 1}/{len(steps)})", file=sys.stderr, flush=True)
        if name == "matmul":
            raw["matmul_gflops"] = {n: matmul_gflops(n) for n in ((256, 512) if quick else (256, 512, 1024))}
        elif name == "model shapes":
            raw["model_shape_gflops"] = {"tiny": model_shape_gflops("tiny", 512),
                                         "small": model_shape_gflops("small", 512)}
        elif name == "memory":
            raw["copy_GBps"] = copy_gbps()
        elif name == "kernel overhead":
            raw["kernel_overhead_us"] = kernel_overhead_us()
        elif name == "attention":
            raw["attention"] = [attention_times(*shape, repeats=3 if quick else 9) for shape in ATTENTION_SHAPES]
        elif name == "model steps":
            points = MODEL_POINTS[:2] if quick else MODEL_POINTS
            raw["model_steps"] = [model_step_times(*pt, repeats=3 if quick else 7) for pt in points]
        elif name == "core sharing":        # k processes computing at once, each timed in wall seconds
            n = 10 if quick else 25
            raw["sharing_fb_s"] = {str(k): statistics.mean(launched("sharing_worker", k, n))
                                   for k in (1, 2, 4)}
        elif name == "rank lag":            # k processes started together: how far behind the slowest is
            raw["straggle"] = {str(k): launched("straggle_worker", k, 12 if quick else 25)[0] for k in (2, 4)}
        elif name == "rpc 1 and 2 workers":       # + a server process
            raw["rpc_round_trip"] = {str(w): launched("rpc_worker", w + 1, quick)[0] for w in (1, 2)}
        elif name.startswith("gloo"):
            world = int(name.split()[1])
            results = launched("gloo_worker", world, quick)
            raw[f"gloo_{world}"] = median_raw(results)
        elif name == "process launch":
            t = time.perf_counter()
            spawn(_noop, 2, timeout=60)
            raw["launch_2_processes_s"] = time.perf_counter() - t
    return raw


def cli(args) -> int:
    from simulator.config import ConfigError

    path = args.out or default_profile_path()
    check_profile_path(path)                   # before minutes of measuring: one line, exit 2
    result = measure(quick=args.quick, progress=True, repeat=getattr(args, "repeat", 1) or 1)
    try:
        result["profile_path"] = write_profile(result["profile"], path)
    except (OSError, ValueError) as e:         # never lose a measurement
        saved = save_aside(result)
        raise ConfigError(f"--out {path}: could not write the profile ({e}); the measurements are in {saved}") from None
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(report_lines(result["raw"], result["profile"], result["profile_path"])))
    return 0


def check_profile_path(path: str) -> None:
    """Refuse, in one line, an --out that cannot take a profile: a folder, a new file in a place that cannot be
    written, or an existing file that is not a JSON object (bench extends an existing profile, so it must read it)."""
    from simulator.config import ConfigError

    if os.path.isdir(path):
        raise ConfigError(f"--out {path}: is a folder; give a file name (e.g. {os.path.join(path, 'cpu.json')})")
    if not os.path.exists(path):
        check_writable("--out", path)
        return
    try:
        with open(path) as f:
            text = f.read()
        prof = json.loads(text) if text.strip() else None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--out {path}: exists but is not a JSON profile ({type(e).__name__}); give another "
                          "file or remove it") from None
    if not isinstance(prof, dict):
        what = "empty" if prof is None else f"a JSON {type(prof).__name__}, not an object"
        raise ConfigError(f"--out {path}: exists but is {what}; give another file or remove it")


def write_profile(values: dict, path: str) -> str:
    """Extend the profile at `path` with `values`, atomically (a temporary file renamed over it)."""
    import tempfile

    from simulator.hardware import DEFAULT_CPU_PROFILE

    prof = dict(DEFAULT_CPU_PROFILE)
    if os.path.exists(path):
        with open(path) as f:
            prof.update(json.load(f))
    prof.update(values)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cpu_profile.", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(prof, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_aside(result: dict) -> str:
    """The whole measurement in a new file of the working directory (when --out could not be written)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="bench-", suffix=".json", dir=".")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f)
    return path
