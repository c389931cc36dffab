import pytest

from simulator.config import load_config
from simulator.data_parallel import bucket_sizes, buckets_ready, compression_factor, gradient_sync


def test_buckets_follow_the_runtime_plan():
    """MiB caps over the tensors in backward order, the first bucket at most 1 MiB (simulator/spec.py)."""
    mib = 2 ** 20 // 4                                        # fp32 elements in one MiB
    sizes = bucket_sizes([mib // 2] + [5 * mib] * 10, 25)    # registration order: a small tensor first
    assert sum(sizes) == 4 * (mib // 2 + 50 * mib)
    assert sizes[0] == 5 * 2 ** 20                           # one tensor alone passes the 1 MiB first bucket
    assert sizes[1:] == [25 * 2 ** 20, 20 * 2 ** 20 + 2 ** 19]   # then 25 MiB caps; the small tensor comes last
    assert len(bucket_sizes([mib] * 10, 0)) == 10            # bucket_mb 0: one tensor per bucket


def test_overlap_hides_all_but_the_last_bucket():
    ready = buckets_ready((0.0, 1.0), [25e6] * 4)        # ready at 0.25, 0.5, 0.75, 1.0
    comm = lambda n, chained: 0.1                           # noqa: E731
    end, busy, spans = gradient_sync(ready, True, comm, 1.0)
    assert end == pytest.approx(1.1) and busy == pytest.approx(0.4)
    end_off, _, _ = gradient_sync(ready, False, comm, 1.0)
    assert end_off == pytest.approx(1.4)
    slow = lambda n, chained: 0.5                           # noqa: E731
    assert gradient_sync(ready, True, slow, 1.0)[0] == pytest.approx(0.25 + 4 * 0.5)


def test_a_collective_right_after_another_is_priced_back_to_back():
    ready = buckets_ready((0.0, 1.0), [25e6] * 4)
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
