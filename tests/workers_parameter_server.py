"""Worker functions for the parameter-server, sync/async and load-balancing tests (importable by name).

`run_configs` trains several configs one after another on the same spawned processes, each through the
real trainer (`run_worker`), each on its own rendezvous port, so one process launch serves many checks.
"""

from __future__ import annotations

import os


def run_configs(rank, world, cfg_dicts, overrides_list):
    import torch.distributed as dist

    from llama_course.trainer import free_port, run_worker
    from simulator.config import load_config

    ports = [free_port() for _ in cfg_dicts] if rank == 0 else [None] * len(cfg_dicts)
    dist.broadcast_object_list(ports, src=0)
    dist.destroy_process_group()            # each run builds its own group on its own port
    out = []
    for port, cfg, overrides in zip(ports, cfg_dicts, overrides_list):
        os.environ["MASTER_PORT"] = str(port)
        records = run_worker(load_config(cfg, overrides), quiet=True)
        out.append(records)
    return out
