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


def run_with_a_death(rank, world, cfg_dict, overrides, heartbeats: dict):
    """One run in which a worker is SIGKILLed (faults.kill); a server returns who it declared dead and how
    long after that worker's last heartbeat it did so. `heartbeats`: the Run's heartbeat_s, dead_after_s."""
    from llama_course.coordination import parameter_server_comm as ps
    from llama_course.trainer import Run, run_worker
    from simulator.config import load_config

    records = run_worker(load_config(cfg_dict, overrides), run=Run(quiet=True, **heartbeats))
    if ps.SERVER[0] is None:
        return records
    mon = ps.SERVER[0].monitor
    return {"declared": sorted(mon.declared), "after_s": {w: mon.declared_at[w] - mon.last[w] for w in mon.declared},
            "version": ps.SERVER[0].version}


def own_listening_addresses() -> set:
    """Local addresses (hex, as /proc/net/tcp* writes them) of this process's listening TCP sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    found.add(fields[1].split(":")[0])
    return found


def run_configs_watching_sockets(rank, world, cfg_dicts, overrides_list):
    """run_configs, while a thread records every address this process listens on (RPC, stores)."""
    import threading

    seen, done = set(), threading.Event()

    def watch():
        while not done.wait(0.05):
            seen.update(own_listening_addresses())

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        return run_configs(rank, world, cfg_dicts, overrides_list), sorted(seen)
    finally:
        done.set()
        t.join()
