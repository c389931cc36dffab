import pytest

from simulator.collectives import CommModel
from simulator.config import load_config
from simulator.hardware import gpu_preset
from simulator.tensor_parallel import tp_block_collectives, tp_comm
from simulator.topology import Cluster


def test_sequence_parallel_moves_the_same_bytes_as_all_reduce():
    plain = tp_block_collectives(2048, 1, 4096, "bf16", False)
    sp = tp_block_collectives(2048, 1, 4096, "bf16", True)
    assert [k for k, _ in plain] == ["all_reduce", "all_reduce"]
    assert sorted(k for k, _ in sp) == ["all_gather", "all_gather", "reduce_scatter", "reduce_scatter"]
    comm = CommModel(Cluster(gpu_preset("a100-80gb"), 8))
    t_plain = sum(comm.time(k, range(8), n, "ring") for k, n in plain)
    t_sp = sum(comm.time(k, range(8), n, "ring") for k, n in sp)
    assert t_sp == pytest.approx(t_plain, rel=0.01)


def test_tp_comm_grows_with_tp_and_is_zero_without_it():
    cfg = load_config({"model": {"preset": "llama-7b"}, "cluster": {"gpu": "a100-80gb", "num_gpus": 8},
                       "seq_len": 2048, "parallel": {"tp": 8}})
    comm = CommModel(Cluster(gpu_preset("a100-80gb"), 8))
    assert tp_comm(cfg, comm, [0]).block_forward == 0.0
    two, eight = tp_comm(cfg, comm, [0, 1]).block_forward, tp_comm(cfg, comm, range(8)).block_forward
    assert 0 < two < eight
