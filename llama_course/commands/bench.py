"""`llama-course bench [--json] [--out FILE] [--quick] [--repeat N]`: measure this machine, write the `cpu` profile.

    llama-course bench                 # about a minute; writes ~/.cache/llama-course/cpu_profile.json
    llama-course bench --repeat 3 --out simulator/profiles/cpu.json   # the shipped reference profile: medians
    llama-course simulate configs/tiny.yaml   # `cluster.gpu: cpu` now predicts with what was measured

What it measures, each the median of several repeats (one thread per process, as training ranks run):

- matmul throughput: square fp32 products (the machine's practical peak) and the forward + backward
  products at the `tiny` and `small` models' real shapes (what a rank really reaches);
- memory bandwidth: a large tensor copy (bytes read + written per second);
- kernel overhead: the time of an element-wise op on a tiny tensor (launch + dispatch cost);
- gloo: point-to-point latency (ping-pong of 4 bytes / 2) and bandwidth (16 MiB), all_reduce latency and
  bus bandwidth (nccl-tests' busbw = algbw x 2(n-1)/n) with 2 and 4 processes, and the all-reduce curves
  the simulator uses (gloo's and the course's ring, 4 B to 16 MiB): in situ, each issued right after ~1.5 ms
  of compute as training issues them, and back to back (means over bursts); a point-to-point exchange
  after compute (a pipeline's), and a parameter server's round trip over torch RPC with 1 and 2 workers;
- core sharing: 1, 2 and 4 processes computing the tiny model at once; k processes get k x t1 / tk cores'
  worth of compute (`effective_cores`; 4 on the 2-core reference VM get ~1.8, not 2), and, started
  together, the slowest of them falls `straggle[k]` behind their mean;
- process launch: spawning 2 processes that join a process group and exit;
- the real model: one micro-batch's forward + backward of the `tiny` and `small` LLaMA at two micro-batch
  sizes, timed inside real train steps (fresh batches, the optimizer in between), and the rest of a step (gradient norm, clipping, the course AdamW), from which two
  numbers of the simulator's `cpu` model are fitted once for the machine (`fit_compute`): the share of the
  matmul peak that a rank's kernels reach and the fixed cost per simulated kernel (eager PyTorch runs ~4
  real ops, with their dispatch and autograd bookkeeping, for each kernel the simulator counts), and the
  optimizer's cost per parameter tensor and per element.

Compute is timed in CPU seconds of the measuring thread (`time.thread_time`), not wall time: other
processes on the machine (tests, other users) then stretch the measurement little, and the profile
describes the machine, not its load at the time. Collectives are timed in wall time (they wait), taking
the median of many repeats.

The profile keys are those `simulator.hardware.cpu_from_profile` reads. A GPU is measured and its preset
calibrated by `scripts/gpu_check.sh` (llama_course/commands/gpu_check.py), not here.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time


def _median_time(fn, repeats: int, warmup: int = 2, clock=time.perf_counter) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def _cpu_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median CPU seconds of this thread (robust to other processes sharing the cores)."""
    return _median_time(fn, repeats, warmup, clock=time.thread_time)


def matmul_gflops(n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _cpu_time(lambda: a @ b, repeats) / 1e9


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
    return flops / _cpu_time(step, repeats) / 1e9


def copy_gbps(n_bytes: int = 64 << 20, repeats: int = 5) -> float:
    import torch

    a = torch.empty(n_bytes // 4)
    b = torch.randn(n_bytes // 4)
    return 2 * n_bytes / _cpu_time(lambda: a.copy_(b), repeats) / 1e9


def kernel_overhead_us(repeats: int = 2000) -> float:
    import torch

    x = torch.randn(16)

    def run():
        for _ in range(repeats):
            x.add_(1.0)

    return _cpu_time(run, 5) / repeats * 1e6


MODEL_POINTS = (("tiny", 128, 1), ("tiny", 128, 4), ("small", 256, 1), ("small", 256, 4))
"""(preset, seq_len, micro_batch) of the real-model measurements the compute model is fitted on."""


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

    step_s = _median_time(step, repeats, clock=clock)
    fb = statistics.median(fb_times[2:])                    # the warm-up steps are not counted
    params = list(engine.base_model.parameters())
    return {"preset": preset, "seq_len": seq_len, "micro_batch": micro_batch, "forward_backward_s": fb,
            "rest_s": max(0.0, step_s - fb), "params": sum(p.numel() for p in params), "tensors": len(params)}


SPEED_POINT = ("tiny", 128, 4)
"""(preset, seq_len, micro_batch) of the speed probe: one of MODEL_POINTS, so the profile predicts it."""


def speed_factor(hw=None, repeats: int = 9) -> dict:
    """How fast this machine computes now against its profile: one process, one thread, the tiny model's
    forward-backward inside train steps (as `bench` fitted the profile on), timed in wall seconds.
    {"measured_s", "predicted_s", "speed_factor": measured / predicted} (above 1: slower than profiled).

    A shared machine's speed drifts (on the 2-core reference VM the same forward-backward measured 23 ms
    and 28 ms a quarter of an hour apart); `compare --calibrate` runs this before and after training."""
    import torch

    from simulator.hardware import gpu_preset

    hw = hw or gpu_preset("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        point = model_step_times(*SPEED_POINT, repeats=repeats, wall=True)
    finally:
        torch.set_num_threads(threads)
    predicted = _predicted_forward_backward(point, hw)
    return {"measured_s": point["forward_backward_s"], "predicted_s": predicted,
            "speed_factor": point["forward_backward_s"] / predicted}


@functools.cache
def _model(preset: str):
    from simulator.config import load_config

    return load_config({"model": {"preset": preset}}).model


def _predicted_forward_backward(point: dict, hw) -> float:
    """The simulator's forward + backward of one micro-batch on one process (what `point` measured)."""
    from simulator.compute import block_times, embedding_times, head_times

    m = _model(point["preset"])
    s, b = point["seq_len"], point["micro_batch"]
    blk = block_times(m, s, b, 1, False, "fp32", True, "none", hw)
    return m.n_layers * (blk.forward + blk.backward) + sum(head_times(m, s, b, 1, "fp32", hw)) \
        + sum(embedding_times(m, s, b, 1, "fp32", hw))


def fit_compute(points: list, peak_flops: float, memory_bandwidth: float) -> dict:
    """Fit the simulator's per-kernel roofline to the measured forward + backward times, and the optimizer.

    Three numbers, least relative squares over the points: the matmul efficiency e_mm (share of the square
    matmul peak), the memory efficiency e_mem (share of the copy bandwidth that eager element-wise ops reach:
    an unfused RMSNorm makes ~7 passes over its input where a fused kernel makes 2) and the fixed seconds o
    per simulated kernel (o is linear and solved for; e_mm and e_mem are searched on a grid). The rest of a
    step (gradient norm, clipping, optimizer) is fitted as tensors x c + elements x d."""
    from simulator.hardware import Hardware

    def hw(e, em, o):
        return Hardware(name="cpu", peak_flops={"fp32": peak_flops, "fp16": peak_flops, "bf16": peak_flops},
                        memory_bytes=1e9, memory_bandwidth=memory_bandwidth, intra_bandwidth=1e9,
                        intra_latency=0, inter_bandwidth=1e9, inter_latency=0, matmul_efficiency=e,
                        memory_efficiency=em, kernel_overhead=o)

    t = [p["forward_backward_s"] for p in points]
    w = [1 / ti**2 for ti in t]
    kernels = [_predicted_forward_backward(p, hw(1.0, 1.0, 1.0)) - _predicted_forward_backward(p, hw(1.0, 1.0, 0.0))
               for p in points]
    grid = [i / 40 for i in range(2, 41)]
    best = None
    for e in grid:
        for em in grid:
            a = [_predicted_forward_backward(p, hw(e, em, 0.0)) for p in points]
            o = max(0.0, sum(wi * ni * (ti - ai) for wi, ni, ti, ai in zip(w, kernels, t, a))
                    / sum(wi * ni * ni for wi, ni in zip(w, kernels)))
            err = sum(((ai + ni * o - ti) / ti) ** 2 for ai, ni, ti in zip(a, kernels, t))
            if best is None or err < best[0]:
                best = (err, e, em, o)
    _, e, em, o = best
    residuals = {f"{p['preset']} mb {p['micro_batch']}": _predicted_forward_backward(p, hw(e, em, o))
                 / p["forward_backward_s"] - 1 for p in points}
    # rest of a step = tensors x c + elements x d (two unknowns, least squares over the points)
    sxx = sum(p["tensors"] ** 2 for p in points)
    syy = sum(p["params"] ** 2 for p in points)
    sxy = sum(p["tensors"] * p["params"] for p in points)
    bx = sum(p["tensors"] * p["rest_s"] for p in points)
    by = sum(p["params"] * p["rest_s"] for p in points)
    det = sxx * syy - sxy * sxy
    c, d = ((syy * bx - sxy * by) / det, (sxx * by - sxy * bx) / det) if det else (0.0, 0.0)
    return {"matmul_efficiency": e, "memory_efficiency": em, "kernel_overhead_us": o * 1e6, "fit_residuals": residuals,
            "optimizer_us_per_tensor": max(0.0, c) * 1e6, "optimizer_ns_per_param": max(0.0, d) * 1e9}


def _tiny_engine(micro_batch: int):
    """A one-process engine of the tiny model (seq 128, fp32, one thread) and a timed step on a fresh batch:
    step() -> wall seconds of its forward-backward (the optimizer step after it is not timed)."""
    import torch

    from llama_course.core.distributed import Context
    from llama_course.core.model import build_model
    from llama_course.engine import Engine
    from simulator.config import load_config

    torch.set_num_threads(1)
    cfg = load_config({"model": {"preset": "tiny"}, "seq_len": 128, "cluster": {"gpu": "cpu", "num_gpus": 1},
                       "parallel": {"micro_batch_size": micro_batch, "global_batch_size": micro_batch,
                                    "implementation": "course"}, "training": {"precision": "fp32"}})
    engine = Engine(cfg, Context(), build_model(cfg))

    def step(before=None) -> float:
        batch = [(torch.randint(cfg.model.vocab_size, (micro_batch, 128)),
                  torch.randint(cfg.model.vocab_size, (micro_batch, 128)))]
        if before:
            before()
        t = time.perf_counter()
        engine.optimizer.zero_grad(set_to_none=True)
        engine.forward_backward(batch)
        took = time.perf_counter() - t
        engine.optimizer.step()
        return took

    return step


def sharing_worker(rank: int, world: int, steps: int) -> float:
    """Runs in each of `world` spawned processes at once: mean wall seconds of the tiny model's
    forward-backward (micro-batch 2, then an optimizer step), free-running, as training ranks compute."""
    step = _tiny_engine(2)
    times = [step() for _ in range(steps)]
    return sum(times[3:]) / len(times[3:])


def straggle_worker(rank: int, world: int, steps: int) -> float:
    """Runs in each of `world` launched processes: the tiny model's forward-backward (micro-batch 4, then
    an optimizer step) started together after a barrier, as data-parallel ranks start a step. Returns the
    mean over steps of (slowest rank's time / mean rank's time) - 1: how far behind the average the rank
    that everyone then waits for is. On shared cores the scheduler is not fair at this time scale."""
    import torch
    import torch.distributed as dist

    step = _tiny_engine(4)
    lags = []
    for i in range(steps):
        took = torch.tensor([step(before=dist.barrier)])
        every = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(every, took)
        if i >= 2:
            times = [float(x) for x in every]
            lags.append(max(times) / statistics.mean(times) - 1)
    return statistics.mean(lags)


def _compute_stretch():
    """~1.5 ms of matmuls: what a rank does between two exchanges in the in-situ measurements."""
    import torch

    a = torch.randn(320, 320)

    def compute():
        for _ in range(4):
            a @ a

    return compute


def gloo_worker(rank: int, world: int, quick: bool) -> dict:
    """Runs in each spawned process: p2p and all_reduce latency and bandwidth over gloo."""
    import torch
    import torch.distributed as dist

    out = {}
    reps = 10 if quick else 30
    small = torch.zeros(1)
    big = torch.zeros((16 << 20) // 4)
    if world == 2:
        def ping(t):
            if rank == 0:
                dist.send(t, 1)
                dist.recv(t, 1)
            else:
                dist.recv(t, 0)
                dist.send(t, 0)
        out["p2p_latency_us"] = _fastest_collective(lambda: ping(small), reps) / 2 * 1e6
        out["p2p_GBps"] = big.numel() * 4 * 2 / _fastest_collective(lambda: ping(big), max(3, reps // 5)) / 1e9
    dist.barrier()
    out["allreduce_latency_us"] = _median_time(lambda: dist.all_reduce(small), reps) * 1e6
    dist.barrier()
    t = _median_time(lambda: dist.all_reduce(big), max(3, reps // 5))
    out["allreduce_busbw_GBps"] = big.numel() * 4 / t * 2 * (world - 1) / world / 1e9
    # all-reduce time against size, for gloo's own all_reduce (tensor parallel, DDP) and the course's ring on
    # send/recv (the course's data parallel engines), measured in situ, as training issues them: each right
    # after a stretch of compute, the mean over bursts, less the compute alone. A collective issued between
    # computations costs 2-4x the fastest one after a barrier: ranks arrive skewed, and on 2 shared cores
    # every step of a ring waits for its partner to be scheduled again (with more processes than cores,
    # for a time slice). That is the time training sees, so it is the time the simulator uses.
    from llama_course.parallel import collectives as C

    compute = _compute_stretch()
    bursts = 5 if quick else 9
    compute_s = _burst(compute, bursts, 8)
    out["in_situ_compute_s"] = compute_s
    for name, fn in (("gloo", lambda x: dist.all_reduce(x)), ("course", lambda x: C.ring_all_reduce(x, None, check=False))):
        curve, chained = [], []
        for nbytes in COLLECTIVE_SIZES:
            x = torch.zeros(max(1, nbytes // 4))

            def both(x=x, fn=fn):
                compute()
                fn(x)

            length = 4 if nbytes >= 1 << 22 else 8
            curve.append([nbytes, max(1e-6, _burst(both, bursts, length) - compute_s)])
            chained.append([nbytes, _burst(lambda x=x, fn=fn: fn(x), bursts, length)])
        out[f"all_reduce_{name}"] = curve
        out[f"all_reduce_back_to_back_{name}"] = chained
    if world == 2:
        # a pipeline's activation (and, the other way, its gradient) after a stretch of compute: rank 0
        # sends, rank 1 receives, then back; seconds per one-way transfer, less the compute
        curve = []
        for nbytes in P2P_SIZES:
            x = torch.zeros(max(1, nbytes // 4))

            def hop(x=x):
                compute()
                ping(x)

            curve.append([nbytes, max(1e-6, (_burst(hop, bursts, 4) - compute_s) / 2)])
        out["p2p_in_situ"] = curve
    return out


_ROUND = None
"""rpc_worker's server side: a barrier over the clients of one round (a BSP parameter server's step)."""


def _echo(tensors: list) -> list:
    """The RPC a `rpc_worker` server answers: once every client of the round has pushed, the tensors back
    (a BSP parameter server answers a push with the new weights once all workers pushed)."""
    if _ROUND is not None:
        _ROUND.wait()
    return [t.clone() for t in tensors]


def rpc_worker(rank: int, world: int, quick: bool) -> list:
    """Runs in `world` launched processes: a parameter-server round trip over torch RPC, set up as the
    course's parameter server sets it up (parameter_server.init_rpc: TensorPipe over TCP on loopback). The
    last rank serves; every other rank computes, then pushes `RPC_TENSORS` tensors of n bytes in all and
    waits for as many back, which the server sends once every client pushed. [(bytes, seconds per round
    trip, less the compute)] on rank 0."""
    import threading

    import torch
    import torch.distributed as dist
    import torch.distributed.rpc as rpc

    from llama_course.coordination.parameter_server import init_rpc

    global _ROUND
    clients = world - 1
    _ROUND = threading.Barrier(clients) if clients > 1 else None
    init_rpc(f"bench{rank}", rank, world)
    curve = []
    if rank < clients:
        compute = _compute_stretch()
        bursts = 5 if quick else 9
        compute_s = _median_time(compute, 20)
        for nbytes in RPC_SIZES:
            xs = [torch.zeros(max(1, nbytes // 4 // RPC_TENSORS)) for _ in range(RPC_TENSORS)]

            def trip(xs=xs):
                compute()
                rpc.rpc_sync(f"bench{clients}", _echo, args=(xs,))

            trip()
            t = time.perf_counter()
            for _ in range(bursts * 4):         # the mean, as `_burst`: a training step pays for every trip
                trip()
            curve.append([nbytes, max(1e-6, (time.perf_counter() - t) / (bursts * 4) - compute_s)])
    rpc.shutdown()
    dist.barrier()
    return curve


def _fastest_collective(fn, repeats: int) -> float:
    """The fastest of `repeats` runs, each started together after a barrier (point-to-point latency and
    bandwidth: what the link can do, not what training sees)."""
    import torch.distributed as dist

    fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _burst(fn, bursts: int, length: int) -> float:
    """Seconds per call of fn: `bursts` bursts of `length` calls, each started after a barrier; the mean over
    every call. The mean, not a median of bursts: between processes on shared cores most collectives take
    their base time and a few wait a scheduler tick (3-6 ms here) for a rank to run again, and a training
    step pays for those too (in a step of the course's 2-rank per-tensor sync on 2026-11-29, 39 all-reduces
    took 0.5 ms each but for a few of 3-6 ms: 1.1 ms on average, where a median of bursts said 0.5)."""
    import torch.distributed as dist

    fn()
    total, calls = 0.0, 0
    for _ in range(bursts):
        dist.barrier()
        t = time.perf_counter()
        for _ in range(length):
            fn()
        total += time.perf_counter() - t
        calls += length
    return total / calls


COLLECTIVE_SIZES = (4, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24)
"""Message sizes (bytes) of the all-reduce curves."""
P2P_SIZES = (4, 1 << 14, 1 << 17, 1 << 20, 1 << 22)
"""Message sizes (bytes) of the in-situ point-to-point curve (a pipeline's activations)."""
RPC_SIZES = (1 << 10, 1 << 16, 1 << 20, 1 << 22)
"""Bytes each way of the RPC round-trip curve (a parameter server's push and pull)."""
RPC_TENSORS = 32
"""Tensors per RPC (a worker pushes a list of gradient tensors: the tiny LLaMA has 38)."""


WORKERS = ("gloo_worker", "sharing_worker", "rpc_worker", "straggle_worker")
"""Measurements that run on several processes, started by `launched` (by name: they cross a process)."""


def launched(name: str, world: int, *args, timeout: float = 300.0) -> list:
    """Run `name`(rank, world, *args) on `world` processes started the way training starts them (torchrun
    on loopback, OMP_NUM_THREADS=1, llama_course.core.distributed's process group); results by rank.

    Not `testing.spawn`: the same 4-process ring all-reduce measured ~9 ms per small tensor in spawned
    processes and ~3-6 ms under torchrun, minutes apart, on the 2-core reference machine."""
    import subprocess
    import tempfile

    from llama_course.trainer import free_port

    if name not in WORKERS:
        raise ValueError(f"unknown bench worker {name}")
    with tempfile.TemporaryDirectory(prefix="llama-course-bench-") as out:
        cmd = [sys.executable, "-m", "llama_course.coordination.fault_tolerance", "--torchrun", "--nnodes=1",
               f"--nproc-per-node={world}", "--max-restarts=0", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1", "--monitor-interval=0.2",
               "-m", "llama_course.commands.bench", "--worker", name, out, json.dumps(list(args))]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "ERROR", "TORCH_CPP_LOG_LEVEL": "ERROR"}
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"bench {name} on {world} processes failed (exit {proc.returncode}): {tail}")
        results = []
        for rank in range(world):
            with open(os.path.join(out, f"rank_{rank}.json")) as f:
                results.append(json.load(f))
        return results


def _worker_main(argv: list) -> None:
    """Entry point of one process started by `launched`."""
    name, out, args = argv[0], argv[1], json.loads(argv[2])
    from llama_course.core.distributed import cleanup, init_distributed

    world = int(os.environ["WORLD_SIZE"])
    ctx = init_distributed(world, 1, 1)
    result = globals()[name](ctx.rank, world, *args)
    with open(os.path.join(out, f"rank_{ctx.rank}.json"), "w") as f:
        json.dump(result, f)
    cleanup()
    sys.stdout.flush()
    os._exit(0)               # skip interpreter teardown (gloo threads can abort there)


def _noop(rank: int, world: int) -> int:
    return rank


def default_profile_path() -> str:
    from simulator.hardware import user_cpu_profile_path

    return user_cpu_profile_path()


def median_raw(raws: list):
    """Element-wise median of several raw measurements (dicts and lists of numbers, same shape)."""
    first = raws[0]
    if isinstance(first, dict):
        return {k: median_raw([r[k] for r in raws]) for k in first}
    if isinstance(first, list):
        return [median_raw([r[i] for r in raws]) for i in range(len(first))]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(raws)
    return first


def measure(quick: bool = False, progress: bool = True, repeat: int = 1) -> dict:
    """Every measurement of the machine, as a dict (raw numbers and the derived profile); with repeat > 1
    the whole bench runs that many times and every raw number is the median over the runs."""
    import torch

    raws = [_measure_raw(quick, progress, f"bench {i + 1}/{repeat}" if repeat > 1 else "bench")
            for i in range(max(1, repeat))]
    raw = median_raw(raws)
    raw["repeats"] = len(raws)
    return {"raw": raw, "profile": derive_profile(raw, torch.__version__)}


def _measure_raw(quick: bool, progress: bool, desc: str) -> dict:
    import torch
    from tqdm import tqdm

    from llama_course.core.testing import spawn

    torch.set_num_threads(1)
    steps = ["matmul", "model shapes", "memory", "kernel overhead", "model steps", "core sharing", "rank lag",
             "gloo 2 processes", "gloo 4 processes", "rpc 1 and 2 workers", "process launch"]
    bar = tqdm(steps, desc=desc, disable=not progress, file=sys.stderr)
    raw: dict = {}
    for name in bar:
        bar.set_postfix_str(name)
        if name == "matmul":
            raw["matmul_gflops"] = {n: matmul_gflops(n) for n in ((256, 512) if quick else (256, 512, 1024))}
        elif name == "model shapes":
            raw["model_shape_gflops"] = {"tiny": model_shape_gflops("tiny", 512),
                                         "small": model_shape_gflops("small", 512)}
        elif name == "memory":
            raw["copy_GBps"] = copy_gbps()
        elif name == "kernel overhead":
            raw["kernel_overhead_us"] = kernel_overhead_us()
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


def derive_profile(raw: dict, torch_version: str) -> dict:
    """The `cpu` profile from raw measurements: peaks, bandwidths, gloo table, and the fitted compute model."""
    peak = max(raw["matmul_gflops"].values())
    g2, g4 = raw["gloo_2"], raw["gloo_4"]
    fit = fit_compute(raw["model_steps"], peak * 1e9, raw["copy_GBps"] * 1e9)
    raw["fit_residuals"] = fit.pop("fit_residuals")
    profile = {
        "name": "cpu",
        "note": f"measured by `llama-course bench` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores, "
                f"torch {torch_version}, median of {raw.get('repeats', 1)} runs); per process, one thread; "
                f"matmul_efficiency, memory_efficiency, kernel_overhead_us and optimizer_* fitted on the real "
                f"model's forward-backward timed inside single-process train steps (bench.fit_compute); "
                f"effective_cores from 1, 2 and 4 processes computing at once, straggle from them started together; "
                f"all-reduce curves in situ "
                f"(after compute) and back to back, p2p and RPC round trips in situ, each the mean over bursts",
        "peak_tflops": {"fp32": peak / 1e3, "bf16": peak / 1e3 / 4, "fp16": peak / 1e3 / 8},
        "memory_bandwidth_GBps": raw["copy_GBps"],
        **fit,
        "intra_node": {"bandwidth_GBps": g2["p2p_GBps"], "latency_us": g2["p2p_latency_us"]},
        "allreduce": {"latency_us_2": g2["allreduce_latency_us"], "busbw_GBps_2": g2["allreduce_busbw_GBps"],
                      "latency_us_4": g4["allreduce_latency_us"], "busbw_GBps_4": g4["allreduce_busbw_GBps"]},
        "all_reduce_seconds": {impl: {str(w): raw[f"gloo_{w}"][f"all_reduce_{impl}"] for w in (2, 4)
                                      if f"all_reduce_{impl}" in raw[f"gloo_{w}"]} for impl in ("gloo", "course")},
        "all_reduce_back_to_back_seconds": {
            impl: {str(w): raw[f"gloo_{w}"][f"all_reduce_back_to_back_{impl}"] for w in (2, 4)
                   if f"all_reduce_back_to_back_{impl}" in raw[f"gloo_{w}"]} for impl in ("gloo", "course")},
        "p2p_in_situ_seconds": g2.get("p2p_in_situ"),
        "rpc_round_trip_seconds": raw.get("rpc_round_trip"),
        "launch_s": raw["launch_2_processes_s"],
        # k processes computing at once get k x t1 / tk cores' worth of compute between them
        # (at most min(k, cores): more is measurement noise in the one-process baseline)
        "effective_cores": {k: min(int(k), os.cpu_count() or int(k), int(k) * raw["sharing_fb_s"]["1"] / t)
                            for k, t in raw["sharing_fb_s"].items()}
        if "sharing_fb_s" in raw else None,
        "straggle": raw.get("straggle"),
        "cores": os.cpu_count(),
    }
    return profile


def _size(nbytes: float) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def cli(args) -> int:
    from simulator.hardware import write_cpu_profile

    result = measure(quick=args.quick, progress=not args.json, repeat=getattr(args, "repeat", 1) or 1)
    path = write_cpu_profile(result["profile"], args.out or default_profile_path())
    result["profile_path"] = path
    if args.json:
        print(json.dumps(result))
    else:
        raw, prof = result["raw"], result["profile"]
        print(f"matmul (fp32, 1 thread): {', '.join(f'{n}^3 {g:.0f}' for n, g in raw['matmul_gflops'].items())} GFLOP/s")
        print(f"model shapes fwd+bwd:    tiny {raw['model_shape_gflops']['tiny']:.0f}, "
              f"small {raw['model_shape_gflops']['small']:.0f} GFLOP/s")
        print(f"memory copy:             {raw['copy_GBps']:.1f} GB/s;  kernel overhead {raw['kernel_overhead_us']:.1f} us")
        for pt in raw["model_steps"]:
            print(f"{pt['preset']:>5} mb {pt['micro_batch']}: forward+backward {pt['forward_backward_s'] * 1e3:7.1f} ms, "
                  f"rest of the step {pt['rest_s'] * 1e3:6.1f} ms")
        print(f"fitted: matmul efficiency {prof['matmul_efficiency']:.2f}, memory efficiency "
              f"{prof['memory_efficiency']:.2f}, {prof['kernel_overhead_us']:.1f} us per "
              f"simulated kernel, optimizer {prof['optimizer_us_per_tensor']:.0f} us/tensor + "
              f"{prof['optimizer_ns_per_param']:.2f} ns/param; residuals "
              + ", ".join(f"{k} {v:+.0%}" for k, v in raw["fit_residuals"].items()))
        for w in (2, 4):
            g = raw[f"gloo_{w}"]
            p2p = f"p2p {g['p2p_latency_us']:.0f} us, {g['p2p_GBps']:.2f} GB/s; " if "p2p_GBps" in g else ""
            print(f"gloo {w} processes:       {p2p}all_reduce {g['allreduce_latency_us']:.0f} us, "
                  f"busbw {g['allreduce_busbw_GBps']:.2f} GB/s")
        if prof.get("p2p_in_situ_seconds"):
            print("p2p after compute:       " + ", ".join(f"{_size(b)} {t * 1e3:.2f} ms"
                                                          for b, t in prof["p2p_in_situ_seconds"]))
        for w, curve in (prof.get("rpc_round_trip_seconds") or {}).items():
            print(f"rpc round trip, {w} worker{'s' if w != '1' else ''}: " + ", ".join(
                f"{_size(b)} {t * 1e3:.2f} ms" for b, t in curve))
        if prof.get("straggle"):
            print("slowest of k behind:     " + ", ".join(f"{k} processes {f:+.1%}" for k, f in prof["straggle"].items()))
        if prof.get("effective_cores"):
            print("core sharing:            " + ", ".join(
                f"{k} processes get {c:.2f} cores" for k, c in prof["effective_cores"].items()))
        print(f"launch 2 processes:      {raw['launch_2_processes_s']:.1f} s")
        print(f"profile written to {path} (peak {prof['peak_tflops']['fp32'] * 1e3:.0f} GFLOP/s fp32 per process)")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(sys.argv[2:])
