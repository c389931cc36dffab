"""Validation: published training runs as configs, and the simulator's error on each.

Every file in `configs/validation/` is one source (a paper table, a repository's benchmark page): its
`role` says whether the simulator was fitted on it (`calibration`: Megatron-LM 2021 Table 1, on which the
one A100 matmul efficiency was chosen) or never looked at it (`validation`). A file holds

    source, url, stack, role      where the numbers come from, and which software produced them
    system                        (optional) whose data-parallel and pipeline rules price the run
                                  (`data_parallel.SYSTEMS`: deepspeed for DeepSpeed's runs, fsdp2 for
                                  torch FSDP, ...; default: the config's parallel.implementation)
    metric                        the published quantity, compared with the `simulate` field of that name
    read / assumed                the settings read from the source, and those it does not give (with why)
    diagnosis                     (optional) what the simulator misses on these rows, in words
    common                        the config every row shares
    rows                          name, where (table or section), published, config (merged over common)

Rows may also use the flat shorthand of Megatron-LM's table (model preset, tp, pp, vpp, num_gpus,
global_batch_size, micro_batch_size, published_tflops).

    error = predicted throughput / published throughput - 1     (> 0: the simulator is too fast)

for a rate metric (TFLOP/s, MFU, tokens/s) that is predicted / published - 1; for `step_time_s` it is
published / predicted - 1. A row whose layout does not fit in memory in the simulator has no error; it
counts as a miss.

    python benchmarks/simulator_validation.py --write docs/simulator/validation.md
"""

from __future__ import annotations

import copy
import glob
import os
from dataclasses import dataclass, field

import yaml

from simulator.config import load_config
from simulator.data_parallel import SYSTEMS
from simulator.simulate import simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALIDATION_DIR = os.path.join(ROOT, "configs", "validation")
MEGATRON_2021 = os.path.join(VALIDATION_DIR, "megatron-2021-table1.yaml")

ROW_KEYS = ("tp", "pp", "vpp", "global_batch_size", "micro_batch_size")
METRICS = ("hardware_tflops_per_gpu", "model_tflops_per_gpu", "mfu", "tokens_per_s_per_gpu", "step_time_s")
ROLES = ("calibration", "validation")


@dataclass
class Row:
    """One published run: its config, the published figure and where it comes from."""

    name: str
    config: dict
    published: float
    metric: str
    role: str
    source: str
    stack: str
    where: str = ""
    url: str = ""
    read: list = field(default_factory=list)
    assumed: dict = field(default_factory=dict)
    diagnosis: str = ""
    file: str = ""
    system: str | None = None


def _merge(base: dict, extra: dict) -> dict:
    """Deep merge of two config dicts (extra wins)."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _row_config(common: dict, row: dict) -> dict:
    cfg = _merge(common, row.get("config") or {})
    if isinstance(row.get("model"), str):                      # Megatron-LM table shorthand
        cfg.setdefault("model", {})["preset"] = row["model"]
    if "num_gpus" in row:
        cfg.setdefault("cluster", {})["num_gpus"] = row["num_gpus"]
    par = cfg.setdefault("parallel", {})
    for key in ROW_KEYS:
        if key in row:
            par[key] = row[key]
    if "vpp" in row:
        par["schedule"] = "interleaved_1f1b" if row["vpp"] > 1 else "1f1b"
    return cfg


def load_source(path: str) -> list:
    """The Rows of one validation file."""
    with open(path) as f:
        data = yaml.safe_load(f)
    role = data.get("role", "validation")
    if role not in ROLES:
        raise ValueError(f"{path}: role must be one of {ROLES}, got {role!r}")
    for key in ("source", "url", "stack", "rows"):
        if not data.get(key):
            raise ValueError(f"{path}: missing '{key}'")
    out = []
    for row in data["rows"]:
        read, assumed = row.get("read", []), row.get("assumed") or {}
        if not all(isinstance(x, str) for x in list(data.get("read", [])) + list(read)) or \
                not all(isinstance(v, str) for v in list((data.get("assumed") or {}).values()) + list(assumed.values())):
            raise ValueError(f"{path}: 'read' entries and 'assumed' values must be plain strings (quote them)")
        metric = row.get("metric", data.get("metric", "hardware_tflops_per_gpu"))
        if metric not in METRICS:
            raise ValueError(f"{path}: metric must be one of {METRICS}, got {metric!r}")
        system = row.get("system", data.get("system"))
        if system is not None and system not in SYSTEMS:
            raise ValueError(f"{path}: system must be one of {SYSTEMS}, got {system!r}")
        published = row.get("published", row.get("published_tflops"))
        name = row.get("name") or row["model"]
        out.append(Row(name=name, config=_row_config(data.get("common") or {}, row), published=float(published),
                       metric=metric, role=role, source=row.get("source", data["source"]),
                       stack=row.get("stack", data["stack"]), where=row.get("where", data.get("where", "")),
                       url=data["url"], read=list(data.get("read", [])) + list(read),
                       assumed={**(data.get("assumed") or {}), **assumed},
                       diagnosis=row.get("diagnosis", data.get("diagnosis", "")), file=os.path.relpath(path, ROOT),
                       system=system))
    return out


def load_all(directory: str = VALIDATION_DIR, role: str | None = None) -> list:
    """Every Row of every file in `directory` (files in name order), optionally of one role."""
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        rows += [r for r in load_source(path) if role is None or r.role == role]
    return rows


def load_rows(path: str = MEGATRON_2021) -> list:
    """[(name, config dict, published)] of one file (the calibration table by default)."""
    return [(r.name, r.config, r.published) for r in load_source(path)]


def error(metric: str, predicted: float, published: float) -> float:
    """predicted throughput / published throughput - 1 (a time is the inverse of a throughput)."""
    if metric == "step_time_s":
        return published / predicted - 1
    return predicted / published - 1


def evaluate(row: Row, overrides=None) -> dict:
    """Simulate one row: {name, layout, gpus, published, predicted, error, fits, memory_GB, ...}."""
    cfg = load_config(row.config, overrides or [], runtime=False)   # other systems' runs, not the course runtime's
    r = simulate(cfg, system=row.system)
    p = cfg.parallel
    pred = r[row.metric]
    layout = f"{p.tp}/{p.pp}/{p.vpp}/{p.dp}" + (f" cp {p.cp}" if p.cp > 1 else "")
    if p.first_stage_layers is not None or p.last_stage_layers is not None:
        layout += f" ({p.first_stage_layers}|{p.last_stage_layers})"
    return {"name": row.name, "model": row.name, "source": row.source, "stack": row.stack, "role": row.role,
            "file": row.file, "diagnosis": row.diagnosis,
            "where": row.where, "metric": row.metric, "layout": layout, "gpus": cfg.cluster.num_gpus,
            "gpu": cfg.cluster.gpu, "zero": p.zero_stage, "published": row.published, "predicted": pred,
            "system": r["config"]["data_parallel_system"],
            "error": error(row.metric, pred, row.published) if pred else None, "fits": r["fits_in_memory"],
            "mfu": r["mfu"], "memory_GB": r["memory_per_gpu_bytes"]["total"] / 1e9,
            "capacity_GB": r["memory_capacity_bytes"] / 1e9,
            "step_time_s": r["step_time_s"], "breakdown_s": r["breakdown_s"], "memory_parts_GB":
            {k: v / 1e9 for k, v in r["memory_per_gpu_bytes"].items()},
            "micro_batches": p.global_batch_size // (p.dp * p.micro_batch_size), "comm_s": r.get("comm_s") or {},
            "bubble": r["breakdown_s"]["bubble"] / r["step_time_s"] if pred else None,
            "exposed_comm": r["breakdown_s"]["exposed_comm"] / r["step_time_s"] if pred else None}


def compare(rows=None, overrides=None) -> list:
    """evaluate() of every row (default: the calibration table, Megatron-LM 2021 Table 1).

    `rows` may be Rows or the (name, config, published) triples of `load_rows` (hardware TFLOP/s)."""
    rows = load_source(MEGATRON_2021) if rows is None else rows
    out = []
    for row in rows:
        if not isinstance(row, Row):
            name, raw, published = row
            row = Row(name, raw, published, "hardware_tflops_per_gpu", "calibration", "", "")
        out.append(evaluate(row, overrides))
    return out


def summary(results: list) -> dict:
    """Counts and errors of a list of evaluate() results: rows, fitted, misses, mean and max |error|."""
    errs = [abs(r["error"]) for r in results if r["error"] is not None]
    return {"rows": len(results), "fit": len(errs), "no_fit": len(results) - len(errs),
            "mean_abs": sum(errs) / len(errs) if errs else None, "max_abs": max(errs) if errs else None,
            "within_8": sum(e <= 0.08 for e in errs), "within_15": sum(e <= 0.15 for e in errs),
            "stacks": sorted({r["stack"] for r in results})}
