"""Capabilities: which combinations of strategies the runtime runs today, in one table.

One config has one meaning in both engines, so a combination is simulated, planned and trained only if the
runtime (llama_course/) really runs it. Each row of `TABLE` is a set of combinations and the runtime engine
that runs them. Three readers, one table:

- validation (config.py) refuses a config that matches no row, with one line naming the fields; `simulate`,
  `plan` and `train` all load configs through it, so they accept and refuse alike (exit code 2);
- the planner (plan.py) validates every candidate layout, so it only proposes what a row allows;
- the engine builder (llama_course/engine.py) builds the engine the first matching row names.

Columns: the config fields that choose an engine, and what that engine must honour.

    column          field                       values
    strategy        parallel.strategy           collective | parameter_server
    sync            parallel.sync               bsp | asp | ssp | local_sgd
    dp, tp, pp      parallel.dp / tp / pp       1 (exactly one) or N (more than one)
    implementation  parallel.implementation     course | torch
    zero_stage      parallel.zero_stage         0 | 1 | 2 | 3
    compression     parallel.compression        none | fp16 | bf16 | topk | powersgd
    policy          load_balance.policy         none | dynamic_batch | backup_workers | balanced_stages
    precision       training.precision          fp32 | fp16 | bf16
    tie_embeddings  model.tie_embeddings        False | True
    schedule        parallel.schedule           gpipe | 1f1b | interleaved_1f1b | zero_bubble (read only when pp > 1)
    cp              parallel.cp                 1 or N (a row that leaves it out takes cp 1 only)
    moe             model.n_experts > 0         False | True (a row that leaves it out takes dense models only)
    ep              parallel.ep                 1 or N (a row that leaves it out takes ep 1 only)

A cell holds one value, a tuple of values, or ANY. Rows are tried top to bottom; the first that matches
names the engine. Adding a combination to the runtime is a one-line change here (widen a cell or add a
row): tests/test_capabilities.py draws configs from the whole space, supported and not, and checks that
`simulate`, `plan` and `train --steps 2` accept or refuse each one alike.

    python -c "from simulator.capabilities import format_table; print(format_table())"
"""

from __future__ import annotations

from typing import Any, NamedTuple

from simulator.schema import (
    COMPRESSIONS,
    IMPLEMENTATIONS,
    POLICIES,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    SYNCS,
    ConfigError,
)

ANY = "*"
"""A cell that takes every value of its column."""
N = "N"
"""dp, tp, pp: more than one."""


class Row(NamedTuple):
    """One set of combinations the runtime runs, and the engine (llama_course/engine.py ENGINES) that runs it."""

    engine: str
    strategy: Any
    sync: Any
    dp: Any
    tp: Any
    pp: Any
    implementation: Any
    zero_stage: Any
    compression: Any
    policy: Any
    precision: Any
    tie_embeddings: Any
    schedule: Any = ANY
    cp: Any = 1
    moe: Any = False
    ep: Any = 1


NO_FP16 = ("fp32", "bf16")   # torch's model parallelism: its fp16 loss scaling under tp/pp is not tested here
CASTS = ("none", "fp16", "bf16")
PS_SYNCS = ("bsp", "asp", "ssp")
PP_POLICIES = ("none", "balanced_stages")
BALANCED = ("dynamic_batch", "backup_workers")
ZERO_ALL_REDUCE = (0, 1)     # the course's ZeRO-0/1 all-reduce: every compression is a hook on it
ZERO_SHARDED = (2, 3)        # ZeRO-2/3 reduce-scatter: only a cast compresses a reduce-scatter
NOT_ZB = ("gpipe", "1f1b", "interleaved_1f1b")   # torch's zero bubble beside DTensor / a dp mesh: not tested here

TABLE = (
    # engine                 strategy            sync         dp tp pp implementation zero_stage        compression policy        precision tie_embeddings
    Row("single",            "collective",       "bsp",       1, 1, 1, ANY,      0,                "none",     "none",       ANY,      ANY),
    Row("data_parallel",     "collective",       "bsp",       ANY, 1, 1, "course", ZERO_ALL_REDUCE, ANY,       "none",       ANY,      ANY),
    Row("data_parallel",     "collective",       "bsp",       ANY, 1, 1, "course", ZERO_SHARDED,    CASTS,     "none",       ANY,      ANY),
    Row("ddp",               "collective",       "bsp",       N, 1, 1, "torch",    0,                ANY,        "none",       ANY,      ANY),
    Row("fsdp2",             "collective",       "bsp",       ANY, 1, 1, "torch",  (1, 2, 3),        "none",     "none",       ANY,      ANY),
    Row("load_balancing",    "collective",       "bsp",       N, 1, 1, "course",   (0, 1, 2),        "none",     BALANCED,     ANY,      ANY),
    Row("local_sgd",         "collective",       "local_sgd", ANY, 1, 1, "course", 0,                "none",     "none",       ANY,      ANY),
    Row("tensor_parallel",   "collective",       "bsp",       1, N, 1, "course",   0,                "none",     "none",       ANY,      ANY),
    Row("torch_tensor_parallel", "collective",   "bsp",       1, N, 1, "torch",    0,                "none",     "none",       NO_FP16,  False),
    Row("pipeline_parallel", "collective",       "bsp",       1, 1, N, "course",   0,                "none",     PP_POLICIES,  ANY,      False),
    Row("torch_pipeline",    "collective",       "bsp",       1, 1, N, "torch",    0,                "none",     PP_POLICIES,  NO_FP16,  False),
    # dp x tp (x pp): the course's data parallelism over each model-parallel shard (Megatron-LM's distributed
    # optimizer at ZeRO-1/2; ZeRO-3 gathers blocks per micro-batch, not under a pipeline)
    Row("parallel_3d",       "collective",       "bsp",       ANY, N, 1, "course", ZERO_ALL_REDUCE, ANY,       "none",       ANY,      ANY),
    Row("parallel_3d",       "collective",       "bsp",       ANY, N, 1, "course", 2,               CASTS,     "none",       ANY,      ANY),
    Row("parallel_3d",       "collective",       "bsp",       ANY, ANY, N, "course", ZERO_ALL_REDUCE, ANY,     PP_POLICIES,  ANY,      False),
    Row("parallel_3d",       "collective",       "bsp",       ANY, ANY, N, "course", 2,             CASTS,     PP_POLICIES,  ANY,      False),
    # torch: one flat all-reduce of the DTensor shards / stages (any compression through the course's
    # compressor), or FSDP2 on the (dp, tp) mesh (torchtitan's 2-D layout; not under a pipeline)
    Row("parallel_3d",       "collective",       "bsp",       ANY, N, 1, "torch",  0,                ANY,        "none",       NO_FP16,  False),
    Row("parallel_3d",       "collective",       "bsp",       ANY, N, 1, "torch",  (2, 3),           "none",     "none",       NO_FP16,  False),
    Row("parallel_3d",       "collective",       "bsp",       ANY, ANY, N, "torch", 0,               ANY,        PP_POLICIES,  NO_FP16,  False, NOT_ZB),
    Row("parameter_server",  "parameter_server", PS_SYNCS,    ANY, 1, 1, "course", 0,                "none",     "none",       NO_FP16,  ANY),
    # context parallelism (cp > 1): the cp ranks average gradients with the dp ranks (dp x cp replicas), so
    # every data-parallel sync runs over them unchanged; the attention of each block gathers K and V
    Row("data_parallel",     "collective",       "bsp",       ANY, 1, 1, "course", ZERO_ALL_REDUCE, ANY,       "none",       ANY,      ANY,   ANY, N),
    Row("data_parallel",     "collective",       "bsp",       ANY, 1, 1, "course", ZERO_SHARDED,    CASTS,     "none",       ANY,      ANY,   ANY, N),
    Row("ddp",               "collective",       "bsp",       ANY, 1, 1, "torch",  0,                ANY,        "none",       ANY,      ANY,   ANY, N),
    Row("fsdp2",             "collective",       "bsp",       ANY, 1, 1, "torch",  (1, 2, 3),        "none",     "none",       ANY,      ANY,   ANY, N),
    Row("parallel_3d",       "collective",       "bsp",       ANY, N, 1, "course", ZERO_ALL_REDUCE, ANY,       "none",       ANY,      ANY,   ANY, N),
    Row("parallel_3d",       "collective",       "bsp",       ANY, N, 1, "course", 2,               CASTS,     "none",       ANY,      ANY,   ANY, N),
    Row("parallel_3d",       "collective",       "bsp",       ANY, ANY, N, "course", ZERO_ALL_REDUCE, ANY,     PP_POLICIES,  ANY,      False, ANY, N),
    Row("parallel_3d",       "collective",       "bsp",       ANY, ANY, N, "course", 2,             CASTS,     PP_POLICIES,  ANY,      False, ANY, N),
    # mixture of experts (model.n_experts > 0; every expert runs every step, on zero tokens if need be, so
    # every sync sees a dense model's gradients): one process, the course's data parallelism (ZeRO 0) and
    # DDP; expert parallelism (ep > 1: experts split over ep replicas, tokens moved by all-to-all, expert
    # gradients summed over the expert data-parallel group) on the course's data parallelism only
    Row("single",            "collective",       "bsp",       1, 1, 1, ANY,      0,                "none",     "none",       ANY,      ANY,   ANY, 1, True),
    Row("data_parallel",     "collective",       "bsp",       ANY, 1, 1, "course", 0,               "none",     "none",       ANY,      ANY,   ANY, 1, True, ANY),
    Row("ddp",               "collective",       "bsp",       N, 1, 1, "torch",    0,                "none",     "none",       ANY,      ANY,   ANY, 1, True),
)

COLUMNS = Row._fields[1:]
FIELDS = {
    "strategy": "parallel.strategy", "sync": "parallel.sync", "dp": "parallel.dp", "tp": "parallel.tp",
    "pp": "parallel.pp", "implementation": "parallel.implementation", "zero_stage": "parallel.zero_stage",
    "compression": "parallel.compression", "policy": "load_balance.policy", "precision": "training.precision",
    "tie_embeddings": "model.tie_embeddings", "schedule": "parallel.schedule", "cp": "parallel.cp",
    "moe": "model.n_experts", "ep": "parallel.ep",
}
"""Column -> the config field it reads."""
VALUES = {
    "strategy": STRATEGIES, "sync": SYNCS, "dp": (1, N), "tp": (1, N), "pp": (1, N),
    "implementation": IMPLEMENTATIONS, "zero_stage": (0, 1, 2, 3), "compression": COMPRESSIONS,
    "policy": POLICIES, "precision": PRECISIONS, "tie_embeddings": (False, True), "schedule": SCHEDULES,
    "cp": (1, N), "moe": (False, True), "ep": (1, N),
}
"""Column -> every value it can take: the space the tests draw from."""
LAYOUT = ("strategy", "dp", "tp", "pp", "cp", "ep")
"""Columns that describe the layout itself: an error names the other fields as the ones to change."""


def key(cfg, **parallel) -> dict:
    """The table columns of a validated config (parallel.dp filled in); `parallel` fields given here
    replace the config's (the planner asks about a layout before building its config)."""
    p = {f: getattr(cfg.parallel, f) for f in ("strategy", "sync", "dp", "tp", "pp", "implementation",
                                                "zero_stage", "compression", "schedule", "cp", "ep")}
    p.update(parallel)
    many = lambda n: N if n > 1 else 1  # noqa: E731
    return {"strategy": p["strategy"], "sync": p["sync"], "dp": many(p["dp"]), "tp": many(p["tp"]),
            "pp": many(p["pp"]), "implementation": p["implementation"], "zero_stage": p["zero_stage"],
            "compression": p["compression"], "policy": cfg.load_balance.policy,
            "precision": cfg.training.precision, "tie_embeddings": bool(cfg.model.tie_embeddings),
            "schedule": p["schedule"] if p["pp"] > 1 else ANY, "cp": many(p["cp"]),
            "moe": bool(cfg.model.n_experts), "ep": many(p["ep"])}


def allows(cell, value) -> bool:
    """Whether a table cell takes `value` (a schedule of ANY is a config without a pipeline)."""
    if cell == ANY or value == ANY:
        return True
    return value in cell if isinstance(cell, tuple) else value == cell


def mismatches(row: Row, k: dict) -> list:
    """Columns of `k` that `row` does not allow."""
    return [c for c in COLUMNS if not allows(getattr(row, c), k[c])]


_MEMO: dict = {"table": None, "rows": {}}
"""match()'s answers for the TABLE they were computed from (the planner asks thousands of times)."""


def match(k: dict) -> Row | None:
    """The first row that allows every column of `k`, or None."""
    if _MEMO["table"] is not TABLE:                 # a test may swap the table: forget the old answers
        _MEMO["table"], _MEMO["rows"] = TABLE, {}
    sig = tuple(k[c] for c in COLUMNS)
    if sig not in _MEMO["rows"]:
        _MEMO["rows"][sig] = next((row for row in TABLE if not mismatches(row, k)), None)
    return _MEMO["rows"][sig]


def supported(k: dict) -> bool:
    return match(k) is not None


def engine_for(cfg) -> str:
    """The runtime engine that runs `cfg` (ConfigError when no row allows it)."""
    return check(cfg).engine


def check(cfg) -> Row:
    """The row that runs `cfg`; ConfigError with one line naming the fields when none does."""
    k = key(cfg)
    row = match(k)
    if row is None:
        raise ConfigError(refusal(k))
    return row


def refusal(k: dict) -> str:
    """One line: which fields the runtime cannot combine, and what the closest engine takes instead.

    The closest row is the one that differs in the fewest columns, differences in the layout (dp, tp, pp,
    strategy) counting double, so a message says "zero_stage 1 is not supported with tp 2" rather than
    "tp 2 is not supported with zero_stage 1"."""
    def cost(row):
        return sum(2 if c in LAYOUT else 1 for c in mismatches(row, k))

    least = min(cost(row) for row in TABLE)
    closest = [row for row in TABLE if cost(row) == least]
    bad = [c for c in COLUMNS if any(c in mismatches(row, k) for row in closest)]
    names = ", ".join(FIELDS[c] for c in bad)
    values = ", ".join(_show(c, k[c]) for c in bad)
    context = [f"{FIELDS[c]} {_show(c, k[c])}" for c in ("strategy", "sync", "dp", "tp", "pp", "cp", "ep", "implementation")
               if c not in bad and getattr(closest[0], c) != ANY and k[c] not in ("collective", "bsp", 1)]
    with_ = f" with {', '.join(context)}" if context else ""
    takes: dict = {}                    # what a closest engine takes -> the engines that take it
    for row in closest:
        what = ", ".join(f"{FIELDS[c] if c == 'moe' else c} {_cell(getattr(row, c), c)}" for c in mismatches(row, k))
        takes.setdefault(what, []).append(row.engine)
    said = "; ".join(f"{' and '.join(dict.fromkeys(engines))} {'engines take' if len(set(engines)) > 1 else 'engine takes'} "
                     f"{what}" for what, engines in takes.items())
    if len(bad) == 1:                   # and where the value the user asked for does run
        c = bad[0]
        rows = [row for row in TABLE if allows(getattr(row, c), k[c])]
        if rows:
            home = min(rows, key=cost)
            needs = [f"{FIELDS[d]} {_cell(getattr(home, d), d)}" for d in mismatches(home, k)]
            said += f"; {_show(c, k[c])} runs with {', '.join(needs)}" if needs else ""
    verb = "is" if len(bad) == 1 else "are"
    together = " together" if len(bad) > 1 else ""
    return (f"{names}: {values} {verb} not supported{together}{with_} (the runtime's {said}; "
            f"the capability table is in docs/design.md)")


def _show(column: str, value) -> str:
    if column in ("dp", "tp", "pp", "cp", "ep"):
        return "> 1" if value == N else "1"
    if column == "moe":
        return "> 0" if value else "0"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _cell(cell, column: str = "") -> str:
    if cell == ANY:
        return "any"
    if cell == N:
        return "> 1"
    if isinstance(cell, tuple):
        return ", ".join(_show(column, v) for v in cell)
    return _show(column if column == "moe" else "", cell)


def format_table() -> str:
    """The table as Markdown (docs/design.md shows it)."""
    head = ("engine",) + COLUMNS
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in TABLE:
        lines.append("| " + " | ".join([row.engine] + [_cell(getattr(row, c), c) for c in COLUMNS]) + " |")
    return "\n".join(lines)
