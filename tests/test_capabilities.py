"""One config, one meaning: configs drawn from the capability table's whole space (simulator/capabilities.py),
supported and not, are accepted or refused alike by `simulate`, `plan` (as a candidate layout) and `train`.

Adding a combination to the runtime is a one-line change in the table; these tests then draw it too.
"""

import contextlib
import io
import os
import subprocess
import sys
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_course.engine import engine_name
from simulator import capabilities as caps
from simulator import plan as planner
from simulator.__main__ import main as simulate_main
from simulator.config import ConfigError, load_config
from simulator.plan import candidates
from simulator.simulate import simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
DEGREE = {1: 1, caps.N: 2}


def _values(cell, column: str) -> list:
    """The values a table cell allows."""
    if cell == caps.ANY:
        return list(caps.VALUES[column])
    return list(cell) if isinstance(cell, tuple) else [cell]


@st.composite
def any_point(draw) -> dict:
    """One value per column, anywhere in the space (most such combinations are not supported)."""
    return {c: draw(st.sampled_from(caps.VALUES[c])) for c in caps.COLUMNS}


@st.composite
def row_point(draw) -> dict:
    """One value per column from the cells of one row of the table (a supported combination)."""
    row = draw(st.sampled_from(caps.TABLE))
    return {c: draw(st.sampled_from(_values(getattr(row, c), c))) for c in caps.COLUMNS}


@st.composite
def points(draw, max_world: int = 4):
    """A point of the table's space, half of them from a row: dp/cp/tp/pp 1 or 2, at most max_world processes."""
    point = draw(st.one_of(row_point(), any_point()))
    world = DEGREE[point["dp"]] * DEGREE[point["cp"]] * DEGREE[point["tp"]] * DEGREE[point["pp"]]
    if world > max_world:
        point["dp"] = 1
    if DEGREE[point["cp"]] * DEGREE[point["tp"]] * DEGREE[point["pp"]] > max_world:
        point["cp"] = 1
    if point["pp"] == 1:
        point["schedule"] = "1f1b"       # read only with a pipeline: the planner spells a pp-1 layout so
    return point


def overrides(point: dict) -> list:
    """The `--set` items of a point, on the tiny config (micro-batch 4, global batch 16); moe: 4 experts,
    top 2; ep N: 2."""
    dp, cp, tp, pp = (DEGREE[point[c]] for c in ("dp", "cp", "tp", "pp"))
    out = [f"parallel.{c}={point[c]}" for c in ("strategy", "sync", "implementation", "zero_stage", "compression",
                                                 "schedule")]
    out += [f"parallel.dp={dp}", f"parallel.cp={cp}", f"parallel.tp={tp}", f"parallel.pp={pp}", "cluster.num_gpus=null",
            f"parallel.vpp={2 if point['schedule'] == 'interleaved_1f1b' else 1}",
            f"parallel.sequence_parallel={str(tp > 1).lower()}", f"load_balance.policy={point['policy']}",
            f"training.precision={point['precision']}", f"model.tie_embeddings={str(point['tie_embeddings']).lower()}",
            "parallel.num_servers=1", "training.steps=2", "training.eval_every=0",
            f"model.n_experts={4 if point['moe'] else 0}", "model.experts_per_token=2",
            f"parallel.ep={DEGREE[point['ep']]}"]
    return out


def layout(cfg) -> dict:
    """The planner's spelling of a config's layout (plan.PLAN_FIELDS)."""
    p = cfg.parallel
    return dict(dp=p.dp, cp=p.cp, tp=p.tp, pp=p.pp, vpp=p.vpp, schedule=p.schedule, zero_stage=p.zero_stage,
                micro_batch_size=p.micro_batch_size, activation_checkpointing=p.activation_checkpointing,
                sequence_parallel=p.sequence_parallel, first_stage_layers=p.first_stage_layers,
                last_stage_layers=p.last_stage_layers, **({"ep": p.ep} if cfg.model.n_experts else {}))


def verdicts(point: dict) -> dict:
    """Each command's answer for the point, in this process: accepted (True) or refused (the message)."""
    items = overrides(point)
    out = {}
    try:
        cfg = load_config(CONFIG, items)
        out["load"] = True
    except ConfigError as e:
        out["load"] = str(e)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        out["simulate"] = simulate_main([CONFIG, "--json", *[x for i in items for x in ("--set", i)]]) == 0
    try:
        base = load_config(CONFIG, items, runtime=False)       # the planner keeps the config's other fields
        with mock.patch.object(planner, "MIN_CP_TOKENS", 1):   # a search heuristic, not a rule: the tiny
            out["plan"] = layout(base) in candidates(base)     # config's 128 tokens are far below it
    except ConfigError as e:                                   # a rule outside the table refused it
        out["plan"] = str(e)
    if out["load"] is True:
        out["engine"] = engine_name(cfg)
        out["simulated"] = simulate(cfg)["fits_in_memory"]
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points())
def test_simulate_plan_and_the_engine_builder_agree_with_the_table(point):
    v = verdicts(point)
    supported = caps.supported(point)
    if v["load"] is True:
        assert supported
        assert v["simulate"] is True and v["plan"] is True and v["simulated"] is True
        assert v["engine"] == caps.match(point).engine            # the builder builds the row's engine
    else:
        assert v["simulate"] is False
        assert v["plan"] is False or not isinstance(v["plan"], bool) and v["plan"] == v["load"]
        assert "\n" not in v["load"]
        if v["plan"] is False:                                 # only the table refused it: naming the fields
            assert not supported and v["load"] == caps.refusal(point)
            assert all(f in caps.FIELDS.values() for f in v["load"].split(":")[0].split(", "))


def test_the_table_refuses_what_the_runtime_ignored():
    """The combinations issue 15 found silently ignored either run now (the composable engine: ZeRO under
    tp and pp, compression on every data-parallel path, load balancing with ZeRO; tests/test_engine.py
    holds each against the single-process run) or are refused, naming the fields."""
    for items, engine in ((["parallel.tp=2", "parallel.dp=2", "parallel.zero_stage=1"], "parallel_3d"),
                          (["parallel.pp=2", "parallel.dp=2", "parallel.compression=fp16"], "parallel_3d"),
                          (["parallel.dp=2", "parallel.implementation=torch", "parallel.compression=topk"], "ddp"),
                          (["parallel.dp=2", "parallel.zero_stage=1", "load_balance.policy=dynamic_batch"],
                           "load_balancing")):
        assert engine_name(load_config(CONFIG, items + ["cluster.num_gpus=null"])) == engine
    for items, field in ((["parallel.strategy=parameter_server", "parallel.dp=2", "parallel.sync=local_sgd"],
                          "parallel.sync"),
                         (["parallel.dp=2", "parallel.sync=local_sgd", "parallel.implementation=torch"],
                          "parallel.implementation"),
                         (["parallel.pp=2", "parallel.dp=2", "parallel.zero_stage=3"], "parallel.zero_stage"),
                         (["parallel.pp=2", "parallel.dp=2", "parallel.zero_stage=1", "parallel.implementation=torch"],
                          "parallel.zero_stage"),
                         (["parallel.dp=2", "parallel.zero_stage=2", "parallel.compression=topk"],
                          "parallel.compression"),
                         (["parallel.dp=2", "parallel.zero_stage=2", "parallel.implementation=torch",
                           "parallel.compression=fp16"], "parallel.compression"),
                         (["parallel.tp=2", "parallel.dp=2", "load_balance.policy=dynamic_batch"],
                          "load_balance.policy")):
        with pytest.raises(ConfigError) as e:
            load_config(CONFIG, items + ["cluster.num_gpus=null"])
        assert field in str(e.value).split(":")[0], str(e.value)


def test_adding_a_row_is_one_line(monkeypatch):
    """Widening one cell makes a refused combination load, plan and build its engine."""
    items = ["parallel.tp=2", "parallel.dp=2", "parallel.zero_stage=1", "parallel.implementation=torch",
             "parallel.sequence_parallel=true", "cluster.num_gpus=null"]
    with pytest.raises(ConfigError):
        load_config(CONFIG, items)
    wider = tuple(r._replace(zero_stage=(1, 2, 3)) if r.engine == "parallel_3d" and r.zero_stage == (2, 3) else r
                  for r in caps.TABLE)
    monkeypatch.setattr(caps, "TABLE", wider)
    cfg = load_config(CONFIG, items)
    assert engine_name(cfg) == "parallel_3d" and layout(cfg) in candidates(cfg)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(point=points())
def test_train_accepts_and_refuses_as_simulate_does(tmp_path_factory, point):
    """`train --steps 2` (real processes) against the in-process verdict: a refused config exits 2 with one
    line before any process starts; an accepted one trains its 2 steps."""
    v = verdicts(point)
    env = dict(os.environ, PYTHONPATH=ROOT, LLAMA_COURSE_TIMEOUT="120")
    metrics = tmp_path_factory.mktemp("train") / "m.jsonl"
    cmd = [sys.executable, "-m", "llama_course", "train", CONFIG, "--quiet", "--metrics", str(metrics)]
    proc = subprocess.run(cmd + [x for i in overrides(point) for x in ("--set", i)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    if v["load"] is True:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(metrics.read_text().splitlines()) == 2
    else:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [f"error: {v['load']}"]
