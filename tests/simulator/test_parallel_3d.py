import pytest

from simulator.collectives import CommModel
from simulator.config import load_config
from simulator.hardware import hardware_for
from simulator.parallel_3d import Layout, simulate_step
from simulator.simulate import simulate
from simulator.topology import Cluster


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


@pytest.mark.parametrize("gpu", ["cpu", "a100-80gb"])
def test_mean_breakdown_averages_the_pipeline_ranks(gpu):
    """breakdown_s is the rank that ends the step; mean_breakdown_s averages every pipeline rank's components
    (what `compare` sets beside a trace averaged over ranks), each rank's adding up to the step. With the
    output head on the last stage the stages differ, so the two readings differ; without pipelining they agree."""
    def run(**parallel):
        cfg = load_config({"model": {"preset": "small"}, "seq_len": 128, "training": {"precision": "fp32"},
                           "cluster": {"gpu": gpu, "num_gpus": parallel["pp"]},
                           "parallel": {"global_batch_size": 8, "micro_batch_size": 2, "tp": 1, "dp": 1,
                                        "schedule": "1f1b", **parallel}})
        return cfg, simulate(cfg)

    cfg, out = run(pp=2)
    mean, crit = out["mean_breakdown_s"], out["breakdown_s"]
    assert sum(mean.values()) == pytest.approx(out["step_time_s"], rel=1e-9)
    # the stages' own compute, from the same stage costs the pipeline ran on
    hw = hardware_for(cfg)
    step = simulate_step(cfg, hw, CommModel(Cluster(hw, 2)))
    per_stage = [step.pipeline.busy[r] for r in range(2)]
    assert per_stage[1] > 1.1 * per_stage[0]                      # the head makes the last stage heavier
    s = hw.straggle_factor(2)                # cpu: the mean rank computes 1/s of the slowest one's time
    assert mean["compute"] == pytest.approx(sum(per_stage) / 2 / s, rel=1e-6)
    assert crit["compute"] == pytest.approx(per_stage[out["critical_stage"]] / s, rel=1e-6)
    assert mean["bubble"] < crit["bubble"]                        # the heavy stage idles less than the light one
    _, flat = run(pp=1)
    assert flat["mean_breakdown_s"] == pytest.approx(flat["breakdown_s"])
