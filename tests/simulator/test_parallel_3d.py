import pytest

from simulator.parallel_3d import Layout


def test_megatron_rank_order():
    lay = Layout(tp=8, dp=4, pp=2, vpp=1)
    assert lay.tp_group() == list(range(8))
    assert lay.dp_group() == [0, 8, 16, 24]
    assert lay.pp_group() == [0, 32]
    for rank in range(64):
        assert lay.rank(*lay.coords(rank)) == rank


def test_every_step_ends_with_its_scalar_all_reduces():
    """The loss over data ranks, the last stage's loss and the norm over pipeline ranks, the norm over
    tensor ranks and (ZeRO-2/3) over data ranks: small all-reduces on the critical path, in exposed_comm."""
    from simulator.simulate import simulate

    def scalars(**parallel):
        cfg = {"model": {"preset": "tiny"}, "seq_len": 64, "training": {"precision": "fp32"},
               "cluster": {"gpu": "a100-80gb", "num_gpus": parallel.pop("gpus")},
               "parallel": {"global_batch_size": 8, "micro_batch_size": 1, **parallel}}
        out = simulate(cfg)
        assert out["comm_s"]["step_scalars"] <= out["breakdown_s"]["exposed_comm"]
        return out["comm_s"]["step_scalars"]

    assert scalars(gpus=1, dp=1) == 0
    one = scalars(gpus=2, dp=2)
    assert one > 0
    assert scalars(gpus=2, dp=2, zero_stage=3) == pytest.approx(2 * one)        # + the sharded norm
    assert scalars(gpus=2, dp=1, tp=2) > 0 and scalars(gpus=2, dp=1, pp=2) > 0
    assert scalars(gpus=None, dp=2, strategy="parameter_server", num_servers=1) == 0   # the server answers
