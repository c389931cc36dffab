"""Spawned workers for tests/test_engine.py: the combinations the composable engine builds from its pieces.

`combos` trains each layout on the random global batches of workers_model_parallel and returns what the
single-process oracle is held against (losses, grad norms, held-out loss, whole weights). `resumed` trains
a config straight through, then again cut after a checkpoint and resumed, through the real trainer.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch.distributed as dist
from workers_model_parallel import global_batches, make_config, reference

STEPS = 3


def run_combo(overrides: dict) -> dict | None:
    from llama_course.core.distributed import init_distributed
    from llama_course.core.model import build_model
    from llama_course.engine import build_engine

    cfg = make_config(overrides)
    p = cfg.parallel
    ctx = init_distributed(p.dp, p.tp, p.pp)
    engine = build_engine(cfg, ctx, build_model(cfg))
    per_dp = len(global_batches(cfg, 1)[0]) // p.dp
    losses, norms = [], []
    for batch in global_batches(cfg, STEPS):
        out = engine.train_step(batch[ctx.dp_rank * per_dp:(ctx.dp_rank + 1) * per_dp], cfg.training.lr)
        losses.append(out["loss"])
        norms.append(out["grad_norm"])
    val = engine.evaluate(global_batches(cfg, 1)[0][:2])
    weights = engine.full_model_state()
    every = [None] * ctx.world_size
    dist.all_gather_object(every, (*losses, val))
    if ctx.rank != 0:
        return None
    return {"engine": engine.name, "sync": type(engine.sync).__name__,
            "transforms": [t.name for t in engine.transforms], "schedule": engine.schedule.name,
            "losses": losses, "norms": norms, "val_loss": val, "weights": weights, "rank_losses": every,
            "reference": reference(cfg, STEPS)}


def combos(rank: int, world: int, cases: list) -> list:
    return [run_combo(case) for case in cases]


def resumed(rank: int, world: int, cfg_dicts: list, root: str) -> list:
    """Per config: the records of a straight run (checkpoints every 2 steps) and of the same run cut at
    its step-2 checkpoint (the later ones deleted) and resumed. Each run_worker on its own port."""
    from llama_course.trainer import free_port, run_worker
    from simulator.config import load_config

    n_runs = 2 * len(cfg_dicts)
    # a fresh folder per attempt: spawn() retries the whole function when a port is taken, and a retry that
    # found the first attempt's checkpoints would resume its "straight" run from them
    shared = [free_port() for _ in range(n_runs)] + [tempfile.mkdtemp(dir=root)] if rank == 0 else [None] * (n_runs + 1)
    dist.broadcast_object_list(shared, src=0)
    ports, attempt = shared[:-1], shared[-1]
    dist.destroy_process_group()            # each run builds its own group on its own port
    out = []
    for i, raw in enumerate(cfg_dicts):
        cfg, folder = load_config(raw), os.path.join(attempt, f"case{i}")
        os.environ["MASTER_PORT"] = str(ports[2 * i])
        straight = run_worker(cfg, checkpoint_dir=folder, quiet=True)
        if rank == 0:                       # cut the run after step 2: only that checkpoint is left
            for name in os.listdir(folder):
                if name.startswith("step_") and name != "step_00000002":
                    shutil.rmtree(os.path.join(folder, name))
            with open(os.path.join(folder, "latest"), "w") as f:
                f.write("step_00000002\n")
        os.environ["MASTER_PORT"] = str(ports[2 * i + 1])
        again = _after_rank0_cut(run_worker, cfg, folder, rank)
        out.append((straight, again))
    return out


def _after_rank0_cut(run_worker, cfg, folder, rank):
    """Resume once rank 0 has cut the folder (a file flag: the process group of the first run is gone)."""
    import time

    flag = os.path.join(folder, "cut")
    if rank == 0:
        open(flag, "w").close()
    while not os.path.exists(flag):
        time.sleep(0.05)
    return run_worker(cfg, checkpoint_dir=folder, quiet=True)


def leave_after_a_late_peer(rank, world, folder: str, barrier: bool) -> bool:
    """Each rank leaves its own process group through core/distributed.cleanup; rank 1 first sleeps and
    writes a file. Returns, on rank 0, whether that file was there once rank 0 had left (the barrier)."""
    import time

    from llama_course.core.distributed import cleanup, init_distributed
    from llama_course.trainer import free_port

    ports = [free_port() if rank == 0 else None]
    dist.broadcast_object_list(ports, src=0)
    dist.destroy_process_group()            # a group of our own, on its own port, as run_worker builds
    os.environ["MASTER_PORT"] = str(ports[0])
    init_distributed(world)
    if rank == 1:
        time.sleep(1.0)
        open(os.path.join(folder, "late"), "w").close()
    cleanup(barrier=barrier)
    return os.path.exists(os.path.join(folder, "late"))
