"""`bench`'s measurements that run on several processes at once: gloo collectives and point-to-point,
the course's ring, RPC round trips, core sharing and the straggle of ranks started together.

Each runs in processes started the way training starts them (`launched`: torchrun on loopback,
OMP_NUM_THREADS=1, llama_course.core.distributed's process group); bench.py collects the results.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time


def median_time(fn, repeats: int, warmup: int = 2, clock=time.perf_counter) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def cpu_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median CPU seconds of this thread (robust to other processes sharing the cores)."""
    return median_time(fn, repeats, warmup, clock=time.thread_time)


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


def _steps_together(micro_batch: int, world: int, steps: int) -> list:
    """The tiny model's forward-backward (then an optimizer step) on every rank, started together after a
    barrier as data-parallel ranks start a step: per step, every rank's wall seconds (all ranks get all of
    them). The first two steps warm up and are left out."""
    import torch
    import torch.distributed as dist

    step = _tiny_engine(micro_batch)
    out = []
    for i in range(steps):
        took = torch.tensor([step(before=dist.barrier)])
        every = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(every, took)
        if i >= 2:
            out.append([float(x) for x in every])
    return out


def straggle_worker(rank: int, world: int, steps: int) -> float:
    """Runs in each of `world` launched processes: the tiny model's forward-backward (micro-batch 4, then
    an optimizer step) started together after a barrier, as data-parallel ranks start a step. Returns the
    mean over steps of (slowest rank's time / mean rank's time) - 1: how far behind the average the rank
    that everyone then waits for is. On shared cores the scheduler is not fair at this time scale."""
    return statistics.mean(max(t) / statistics.mean(t) - 1 for t in _steps_together(4, world, steps))


def speed_worker(rank: int, world: int, repeats: int) -> float:
    """Runs in each of `world` processes at once: the speed probe (`bench.speed_factor`) as training ranks
    meet it, the tiny model's forward-backward at SPEED_POINT started together after a barrier, as
    data-parallel ranks start a step. Returns the median over `repeats` steps (after two warm-up steps) of
    the slowest rank's wall seconds: what a synchronizing step waits for."""
    from simulator.calibration import SPEED_POINT

    preset, seq_len, micro_batch = SPEED_POINT
    assert (preset, seq_len) == ("tiny", 128), "speed_worker's engine is the tiny model at seq 128"
    return statistics.median(max(t) for t in _steps_together(micro_batch, world, repeats + 2))


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
        def one(op, t, peer):                  # a message as a batch of one (NCCL's rules, strict mode)
            for work in dist.batch_isend_irecv([dist.P2POp(op, t, peer)]):
                work.wait()

        def ping(t):
            if rank == 0:
                one(dist.isend, t, 1)
                one(dist.irecv, t, 1)
            else:
                one(dist.irecv, t, 0)
                one(dist.isend, t, 0)
        out["p2p_latency_us"] = _fastest_collective(lambda: ping(small), reps) / 2 * 1e6
        out["p2p_GBps"] = big.numel() * 4 * 2 / _fastest_collective(lambda: ping(big), max(3, reps // 5)) / 1e9
    dist.barrier()
    out["allreduce_latency_us"] = median_time(lambda: dist.all_reduce(small), reps) * 1e6
    dist.barrier()
    t = median_time(lambda: dist.all_reduce(big), max(3, reps // 5))
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
    min_s = POINT_SECONDS / 5 if quick else POINT_SECONDS
    compute_s = _burst(compute, bursts, 8, min_s)
    out["in_situ_compute_s"] = compute_s
    for name, fn in (("gloo", lambda x: dist.all_reduce(x)), ("course", lambda x: C.ring_all_reduce(x, None, check=False))):
        curve, chained = [], []
        for nbytes in COLLECTIVE_SIZES:
            x = torch.zeros(max(1, nbytes // 4))

            def both(x=x, fn=fn):
                compute()
                fn(x)

            length = 4 if nbytes >= 1 << 22 else 8
            curve.append([nbytes, max(1e-6, _burst(both, bursts, length, min_s) - compute_s)])
            chained.append([nbytes, _burst(lambda x=x, fn=fn: fn(x), bursts, length, min_s)])
        out[f"all_reduce_{name}"] = curve
        out[f"all_reduce_back_to_back_{name}"] = chained
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
        compute_s = median_time(compute, 20)
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


def _burst(fn, bursts: int, length: int, min_s: float = 0.0) -> float:
    """Seconds per call of fn: bursts of `length` calls, each started after a barrier; the mean over every
    call. The mean, not a median of bursts: between processes on shared cores most collectives take their
    base time and a few wait a scheduler tick (3-6 ms here) for a rank to run again, and a training step pays
    for those too (in a step of the course's 2-rank per-tensor sync on 2026-11-29, 39 all-reduces took 0.5 ms
    each but for a few of 3-6 ms: 1.1 ms on average, where a median of bursts said 0.5).

    At least `bursts` bursts, and as many more as fill `min_s` wall seconds (at most `MAX_BURSTS`): those
    waits come every few tens of milliseconds, and a mean sampled over less time than that mostly misses them.
    On 2026-12-07, 9 bursts of 8 back-to-back 16 KB ring all-reduces (45 ms in all) read 0.5 to 4.4 ms per
    call over 12 tries, median 1.1 ms; 72 bursts of 8, alternating with them, read 0.8 to 2.9 ms, median 1.8
    (a 2-rank per-tensor sync of the tiny model, traced in training that hour: 1.4 ms per call on average).
    The compare suite's per-tensor rows had measured more exposed communication than bench's curves
    predicted in 14 of its 15 kept runs (benchmarks/compare_runs.py). The number of bursts is agreed over the
    ranks (the slowest rank's first burst sets it), so every rank issues the same collectives."""
    import torch
    import torch.distributed as dist

    def one() -> float:
        dist.barrier()
        t = time.perf_counter()
        for _ in range(length):
            fn()
        return time.perf_counter() - t

    fn()
    total = one()
    if min_s > 0:
        first = torch.tensor([total], dtype=torch.float64)
        dist.all_reduce(first, op=dist.ReduceOp.MAX)
        bursts = max(bursts, min(MAX_BURSTS, math.ceil(min_s / max(first.item(), 1e-9))))
    total += sum(one() for _ in range(bursts - 1))
    return total / (bursts * length)


MAX_BURSTS = 200
"""At most this many bursts per point of a curve (`_burst`)."""
POINT_SECONDS = 0.5
"""Wall seconds each point of the all-reduce curves is sampled over at least (`--quick`: a fifth)."""


COLLECTIVE_SIZES = (4, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24)
"""Message sizes (bytes) of the all-reduce curves."""
RPC_SIZES = (1 << 10, 1 << 16, 1 << 20, 1 << 22)
"""Bytes each way of the RPC round-trip curve (a parameter server's push and pull)."""
RPC_TENSORS = 32
"""Tensors per RPC (a worker pushes a list of gradient tensors: the tiny LLaMA has 38)."""


WORKERS = ("gloo_worker", "sharing_worker", "rpc_worker", "straggle_worker", "speed_worker")
"""Measurements that run on several processes, started by `launched` (by name: they cross a process)."""


def launched(name: str, world: int, *args, timeout: float = 300.0) -> list:
    """Run `name`(rank, world, *args) on `world` processes started the way training starts them (torchrun
    on loopback, OMP_NUM_THREADS=1, llama_course.core.distributed's process group); results by rank.

    Not `testing.spawn`: the same 4-process ring all-reduce measured ~9 ms per small tensor in spawned
    processes and ~3-6 ms under torchrun, minutes apart, on the 2-core reference machine."""
    import subprocess
    import tempfile

    from llama_course.core.launch import free_port

    if name not in WORKERS:
        raise ValueError(f"unknown bench worker {name}")
    with tempfile.TemporaryDirectory(prefix="llama-course-bench-") as out:
        cmd = [sys.executable, "-m", "llama_course.core.launch", "--torchrun", "--nnodes=1",
               f"--nproc-per-node={world}", "--max-restarts=0", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1", "--monitor-interval=0.2",
               "-m", "llama_course.commands.bench_processes", "--worker", name, out, json.dumps(list(args))]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "ERROR", "TORCH_CPP_LOG_LEVEL": "ERROR",
               "LLAMA_COURSE_STRICT": "0"}        # measure the machine, not strict mode's bookkeeping
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


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(sys.argv[2:])

