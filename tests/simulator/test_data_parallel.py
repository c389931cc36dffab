import pytest

from simulator.config import ConfigError, load_config
from simulator.data_parallel import bucket_sizes, buckets_ready, compression_factor, gradient_sync


def test_buckets_split_the_bytes():
    assert sum(bucket_sizes(100e6, 25, 10)) == pytest.approx(100e6) and len(bucket_sizes(100e6, 25, 10)) == 4
    assert len(bucket_sizes(100e6, 0, 10)) == 10


def test_overlap_hides_all_but_the_last_bucket():
    ready = buckets_ready((0.0, 1.0), 100e6, 25, 1)        # ready at 0.25, 0.5, 0.75, 1.0
    comm = lambda n, chained: 0.1                           # noqa: E731
    end, busy, spans = gradient_sync(ready, True, comm, 1.0)
    assert end == pytest.approx(1.1) and busy == pytest.approx(0.4)
    end_off, _, _ = gradient_sync(ready, False, comm, 1.0)
    assert end_off == pytest.approx(1.4)
    slow = lambda n, chained: 0.5                           # noqa: E731
    assert gradient_sync(ready, True, slow, 1.0)[0] == pytest.approx(0.25 + 4 * 0.5)


def test_a_collective_right_after_another_is_priced_back_to_back():
    ready = buckets_ready((0.0, 1.0), 100e6, 25, 1)
    calls = []

    def comm(n, chained):
        calls.append(chained)
        return 0.2 if not chained else 0.1

    end, _, _ = gradient_sync(ready, False, comm, 1.0)         # all after the backward: one in situ, 3 chained
    assert calls == [False, True, True, True] and end == pytest.approx(1.0 + 0.2 + 3 * 0.1)
    calls.clear()
    gradient_sync(ready, True, comm, 1.0)                      # overlapped, each ready after the last ended
    assert calls == [False, False, False, False]


def test_compression_factors():
    base = {"training": {"precision": "fp32"}}
    assert compression_factor(load_config(base, ["parallel.compression=fp16"])) == 0.5
    assert compression_factor(load_config(base, ["parallel.compression=topk", "parallel.topk_ratio=0.01"])) == 0.02
    ps = compression_factor(load_config({"model": {"preset": "llama-7b"}}, ["parallel.compression=powersgd"]))
    assert 0 < ps < 0.01
    assert compression_factor(load_config(base)) == 1.0


def test_gradients_are_reduced_in_fp32_by_default_under_bf16():
    """training.grad_reduce_dtype: null = fp32 for bf16/fp16 training (Megatron-LM's fp32 main gradients);
    the data-parallel all-reduce moves 4 bytes per gradient, bf16 half of that: ring closed form per bucket."""
    from simulator.data_parallel import bucket_sizes, grad_bytes_per_param
    from simulator.memory import layers_per_virtual_stage, virtual_stage_params
    from simulator.simulate import simulate
    from simulator.topology import Cluster
    from simulator.hardware import hardware_for

    base = {"model": {"preset": "llama-1b"}, "seq_len": 1024, "cluster": {"gpu": "a100-80gb", "num_gpus": 8},
            "parallel": {"global_batch_size": 8, "overlap": False}, "training": {"precision": "bf16"}}
    cfg = load_config(base)
    assert cfg.training.grad_reduce_dtype == "fp32" and grad_bytes_per_param(cfg) == 4
    assert load_config({"training": {"precision": "fp32"}}).training.grad_reduce_dtype == "fp32"
    with pytest.raises(ConfigError):
        load_config(base, ["training.grad_reduce_dtype=int8"])
    psi = sum(virtual_stage_params(cfg, layers_per_virtual_stage(cfg.model.n_layers, 1)))
    cl = Cluster(hardware_for(cfg), 8)
    alpha, bw = cl.path_latency(0, 1), cl.bottleneck(0, 1)
    for dtype, e in (("fp32", 4), ("bf16", 2)):
        r = simulate(load_config(base, [f"training.grad_reduce_dtype={dtype}"]))
        closed = sum(2 * 7 * (alpha + s / (8 * bw)) for s in bucket_sizes(psi * e, 25, 1))
        assert r["comm_s"]["dp_total"] == pytest.approx(closed, rel=1e-6), dtype
