"""The wire recorder and strict mode (llama_course/core/wire.py) on 2 gloo ranks: bytes by kind against
their closed forms, and each NCCL rule broken once."""

import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import workers_wire  # noqa: E402

from llama_course.core import testing, wire  # noqa: E402
from llama_course.core.testing import spawn  # noqa: E402

N, F32, F64 = workers_wire.N, 4, 8


@pytest.fixture(scope="module")
def recorded():
    return spawn(workers_wire.record_every_kind, 2, timeout=120)


def test_bytes_by_kind_equal_the_closed_forms(recorded):
    for rank, r in enumerate(recorded):
        world = 2
        assert r["bytes"] == {"all_reduce": N * F32,                  # the tensor
                              "reduce_scatter": world * N * F32,      # its input
                              "all_gather": N * F32 + N * F64,        # the local input (twice: two calls)
                              "broadcast": N * F32,
                              "send": N * F32, "recv": N * F32,       # one batched exchange
                              "all_to_all": world * N * F32,
                              "rpc": 0}
        ops = [c.op for c in r["log"]]
        assert ops == ["all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor", "all_gather", "broadcast",
                       "all_to_all_single", "batch_isend_irecv", "batch_isend_irecv"]
        send = next(c for c in r["log"] if c.kind == "send")
        assert send.peer == 1 - rank and send.group_size == 2 and send.dtype == "torch.float32"
        assert all(c.peer is None for c in r["log"] if c.kind not in ("send", "recv"))
        assert r["received"] == [2.0 * (1 - rank)] * N          # x = all_reduce(ones) = 2, times the sender's rank


def test_the_course_ring_shows_as_its_point_to_point_chunks(recorded):
    """A ring all-reduce of n elements over N ranks sends and receives 2 (N - 1) / N n e bytes per rank."""
    for r in recorded:
        expect = 2 * (2 - 1) / 2 * N * F32
        assert r["ring"]["send"] == expect and r["ring"]["recv"] == expect
        assert r["ring"]["all_reduce"] == 0
        assert {c.op for c in r["ring_calls"]} == {"batch_isend_irecv"}


def test_rpc_counts_the_tensor_bytes_of_its_arguments_and_refuses_device_tensors(recorded):
    for r in recorded:
        assert r["rpc"]["rpc"] == N * F32 + 3 * F64
        assert "stage" in r["strict_rpc"] and "meta" in r["strict_rpc"]


def test_ddp_is_seen_only_through_the_python_hook_with_the_same_gradients(recorded):
    """DDP's C++ reducer all-reduces unseen; watch_ddp's hook goes through dist.all_reduce (4 x 3 + 3 floats)."""
    import torch

    for r in recorded:
        assert r["ddp"][False]["bytes"] == 0 and r["ddp"][True]["bytes"] == (4 * 3 + 3) * F32
        for a, b in zip(r["ddp"][False]["grad"], r["ddp"][True]["grad"]):
            torch.testing.assert_close(a, b)


def test_log_has_every_kind_and_clears():
    log = wire.WireLog([wire.WireCall("send", "isend", "torch.float32", 8, 2, 1)])
    assert log.bytes_by_kind() == {**dict.fromkeys(wire.KINDS, 0), "send": 8}
    log.clear()
    assert log.bytes_by_kind() == dict.fromkeys(wire.KINDS, 0)


def test_install_is_idempotent():
    import torch.distributed as dist

    wire.install()
    first = dist.all_reduce
    wire.install()
    assert dist.all_reduce is first and dist.distributed_c10d.isend is dist.isend
    assert dist.all_reduce.__wrapped__.__name__ == "all_reduce"


def test_strict_switch(monkeypatch):
    monkeypatch.setattr(wire, "_STRICT", None)
    monkeypatch.setenv("LLAMA_COURSE_STRICT", "1")
    assert wire.strict_enabled()
    monkeypatch.setenv("LLAMA_COURSE_STRICT", "0")
    assert not wire.strict_enabled()
    wire.set_strict(True)
    assert wire.strict_enabled()
    wire.set_strict(False)
    assert not wire.strict_enabled()


@pytest.fixture(scope="module")
def strict():
    return spawn(workers_wire.strict_rules, 2, timeout=120)


def test_unbatched_point_to_point_raises(strict):
    for r in strict:
        assert "unbatched isend to rank" in r["unbatched_isend"]
        assert "unbatched recv from rank" in r["unbatched_recv"]


def test_a_tensor_on_another_device_than_the_engines_raises(strict):
    for r in strict:
        assert "all_reduce got a tensor on cpu" in r["device"] and "device is meta" in r["device"]


def test_batches_that_disagree_fail_at_once_naming_the_peer(strict):
    for rank, r in enumerate(strict):
        peer = 1 - rank
        assert f"rank {peer}" in r["size"] and "4 x torch.float32" in r["size"] and "5 x torch.float32" in r["size"]
        assert f"rank {peer}" in r["tag"] and "(tag 1)" in r["tag"] and "(tag 2)" in r["tag"]
        assert f"deadlock with rank {peer}" in r["deadlock"]


def test_a_rank_waiting_on_one_that_broke_strict_mode_fails_at_once():
    """A chain of waiting ranks unwinds when its end breaks a rule: rank 0 waits for rank 1, which deadlocked
    with rank 2; rank 0 learns it from the store, not from the timeout."""
    out = spawn(workers_wire.strict_chain, 3, timeout=60)
    # whichever of 1 and 2 sees the deadlock first says so; the other may instead learn it from the store
    assert "deadlock with rank 2" in out[1]["error"] or "rank 2 broke strict mode" in out[1]["error"]
    assert "deadlock with rank 1" in out[2]["error"] or "rank 1 broke strict mode" in out[2]["error"]
    assert "rank 1 broke strict mode while I waited for it" in out[0]["error"]
    assert "deadlock with rank" in out[0]["error"]             # and says what rank 1 met


def test_paired_and_one_way_batches_complete(strict):
    for rank, r in enumerate(strict):
        assert r["paired"] == "" and r["paired_received"] == [float(1 - rank)] * 3
        assert r["one_way"] == ""
    assert strict[1]["one_way_received"] == [7.0, 7.0]


# ---------------------------------------------------------------------------------------------
# the device rule, statically: on CPU every tensor is on the CPU, so run time cannot show a mix
# ---------------------------------------------------------------------------------------------

FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "linspace", "eye", "rand", "randn",
             "randint", "randperm", "empty_strided", "scalar_tensor"}


def distributed_modules() -> list:
    """The modules whose tensors may reach a collective or RPC: engines, strategies, their communication."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "llama_course"
    return sorted([root / "core" / "distributed.py", root / "core" / "checkpoint.py", root / "core" / "wire.py",
                   root / "engine.py", root / "trainer.py", *(root / "parallel").glob("*.py"),
                   *(root / "coordination").glob("*.py")])


def factories_without_device(path) -> list:
    """`torch.<factory>(...)` calls in a module that do not say device= (`*_like` calls inherit theirs)."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and not any(k.arg == "device" for k in node.keywords)):
            out.append(f"{path.name}:{node.lineno} torch.{node.func.attr}")
    return out


def test_distributed_modules_build_every_tensor_on_an_explicit_device():
    """NCCL needs every tensor of a collective on the GPU: a factory without device= builds on the CPU."""
    offenders = [o for path in distributed_modules() for o in factories_without_device(path)]
    assert offenders == []


def test_the_static_check_finds_a_factory_without_device(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import torch\nx = torch.zeros(3)\ny = torch.zeros(3, device=d)\nz = torch.zeros_like(x)\n")
    assert factories_without_device(module) == ["m.py:2 torch.zeros"]


def test_spawn_retries_a_store_port_taken_before_rank_0_binds(monkeypatch):
    """The store port `_free_port` chose can be taken (another process's ephemeral port) before rank 0
    binds it: spawn starts again on a fresh port instead of failing a test with EADDRINUSE."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1], testing._free_port()]
    monkeypatch.setattr(testing, "_free_port", lambda: ports.pop(0))
    try:
        assert spawn(workers_wire.world_sum, 2, timeout=60) == [3.0, 3.0]
    finally:
        taken.close()
    assert ports == []                                  # the second port was used


def test_spawned_ranks_fork_from_one_server_and_see_the_callers_environment_now(monkeypatch, tmp_path):
    """Ranks are forked from the fork server (their parent is not the caller), which started before these
    variables and this folder changed: each rank still sees them as the caller has them at the call."""
    spawn(workers_wire.world_sum, 2, timeout=60)                 # the fork server is running from here on
    monkeypatch.setenv("LLAMA_COURSE_SPAWN_CHECK", "set after the server started")
    monkeypatch.delenv("LLAMA_COURSE_STRICT", raising=False)     # conftest sets it before the server started
    monkeypatch.chdir(tmp_path)
    names = ["LLAMA_COURSE_SPAWN_CHECK", "LLAMA_COURSE_STRICT"]
    for r in spawn(workers_wire.where_i_run, 2, names, timeout=60):
        assert r["env"] == {"LLAMA_COURSE_SPAWN_CHECK": "set after the server started", "LLAMA_COURSE_STRICT": None}
        assert r["cwd"] == str(tmp_path)
        assert r["ppid"] != os.getpid()


def test_spawn_starts_fresh_interpreters_where_there_is_no_fork_server(monkeypatch):
    """Windows has no fork server: each rank is then a fresh interpreter, the caller's child."""
    import torch.multiprocessing as mp

    monkeypatch.setattr(mp, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setenv("LLAMA_COURSE_SPAWN_CHECK", "fresh")
    for r in spawn(workers_wire.where_i_run, 2, ["LLAMA_COURSE_SPAWN_CHECK"], timeout=120):
        assert r["env"] == {"LLAMA_COURSE_SPAWN_CHECK": "fresh"} and r["ppid"] == os.getpid()
