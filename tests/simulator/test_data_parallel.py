import pytest

from simulator.config import load_config
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
