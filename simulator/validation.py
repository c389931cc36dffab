"""Validation: published training runs as configs, and the simulator's error on each.

Reads `configs/validation/*.yaml` (a `common` section and `rows`, each with a `published_tflops`), builds
one config per row and compares `hardware_tflops_per_gpu` with the published figure.

    python benchmarks/simulator_validation.py            # markdown table for docs/simulator/validation.md
    python benchmarks/simulator_validation.py --fit      # rescan the A100 matmul efficiency
"""

from __future__ import annotations

import copy
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEGATRON_2021 = os.path.join(ROOT, "configs", "validation", "megatron-2021-table1.yaml")

ROW_KEYS = ("tp", "pp", "vpp", "global_batch_size", "micro_batch_size")


def load_rows(path: str = MEGATRON_2021) -> list:
    """[(name, config dict, published TFLOP/s per GPU)] of a validation file."""
    with open(path) as f:
        data = yaml.safe_load(f)
    out = []
    for row in data["rows"]:
        cfg = copy.deepcopy(data["common"])
        cfg.setdefault("model", {})["preset"] = row["model"]
        cfg.setdefault("cluster", {})["num_gpus"] = row["num_gpus"]
        par = cfg.setdefault("parallel", {})
        for key in ROW_KEYS:
            par[key] = row[key]
        par["schedule"] = "interleaved_1f1b" if row["vpp"] > 1 else "1f1b"
        out.append((row["model"], cfg, float(row["published_tflops"])))
    return out


def compare(rows=None, overrides=None) -> list:
    """[{model, layout, published, predicted, error}] with error = predicted / published - 1."""
    from simulator.config import load_config
    from simulator.simulate import simulate

    out = []
    for name, raw, published in rows or load_rows():
        cfg = load_config(raw, overrides or [], runtime=False)     # Megatron-LM's runs, not the course runtime's
        r = simulate(cfg)
        pred = r["hardware_tflops_per_gpu"]
        p = cfg.parallel
        out.append({"model": name, "layout": f"{p.tp}/{p.pp}/{p.vpp}/{p.dp}", "gpus": cfg.cluster.num_gpus,
                    "published": published, "predicted": pred, "mfu": r["mfu"],
                    "bubble": r["breakdown_s"]["bubble"] / r["step_time_s"] if pred else None,
                    "error": pred / published - 1 if pred else None, "fits": r["fits_in_memory"],
                    "memory_GB": r["memory_per_gpu_bytes"]["total"] / 1e9})
    return out
