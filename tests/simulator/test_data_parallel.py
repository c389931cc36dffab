import pytest

from simulator.collectives import CommModel
from simulator.config import ConfigError, load_config
from simulator.data_parallel import (
    DEEPSPEED_2021_ZERO3_SLOWDOWN,
    DEEPSPEED_REDUCE_BUCKET,
    bucket_ready,
    bucket_sizes,
    buckets_ready,
    compression_factor,
    exposed_gathers,
    grad_bytes_per_param,
    gradient_sync,
    reduce_bucket_mb,
    zero_semantics,
)
from simulator.hardware import hardware_for
from simulator.memory import layers_per_virtual_stage, virtual_stage_params
from simulator.parallel_3d import chunk_tensors, grad_bucket_ready, grad_buckets, simulate_step
from simulator.simulate import simulate
from simulator.spec import stage_tensor_backward_work, stage_tensor_numels
from simulator.topology import Cluster


def test_buckets_follow_the_runtime_plan():
    """MiB caps over the tensors in backward order, the first bucket at most 1 MiB (simulator/spec.py)."""
    mib = 2 ** 20 // 4                                        # fp32 elements in one MiB
    sizes = bucket_sizes([mib // 2] + [5 * mib] * 10, 25)    # registration order: a small tensor first
    assert sum(sizes) == 4 * (mib // 2 + 50 * mib)
    assert sizes[0] == 5 * 2 ** 20                           # one tensor alone passes the 1 MiB first bucket
    assert sizes[1:] == [25 * 2 ** 20, 20 * 2 ** 20 + 2 ** 19]   # then 25 MiB caps; the small tensor comes last
    assert len(bucket_sizes([mib] * 10, 0)) == 10            # bucket_mb 0: one tensor per bucket


def test_buckets_are_ready_by_backward_work_not_bytes():
    """A bucket is ready once the backward has done the work of its tensors and those before them: a lookup
    table's gradient (the embedding's) costs no backward work, so the bucket before it waits for the end."""
    mib = 2 ** 20 // 4
    numels = [4 * mib] + [2 * mib] * 4 + [4 * mib]            # embedding, 4 matrices, head (registration order)
    work = [0] + [2 * mib] * 4 + [4 * mib]
    # backward order: the head (4 MiB, alone: past the 1 MiB first bucket), the matrices (8 MiB under the
    # 10 MiB cap), the embedding
    assert bucket_sizes(numels, 10) == [4 * 2 ** 20, 8 * 2 ** 20, 4 * 2 ** 20]
    assert bucket_ready(numels, 10, work) == pytest.approx([4 / 12, 1.0, 1.0])
    assert bucket_ready(numels, 10, numels) == pytest.approx([4 / 16, 12 / 16, 1.0])    # by bytes, as before
    # the tiny model's stage: every tensor's elements but the embedding's, whose table is a lookup
    tiny = load_config("configs/tiny.yaml").model
    sizes = stage_tensor_numels(tiny, 128, 4, True, True)
    assert stage_tensor_backward_work(tiny, 128, 4, True, True) == [0] + sizes[1:]
    tied = load_config("configs/tiny.yaml", ["model.tie_embeddings=true"]).model
    assert stage_tensor_backward_work(tied, 128, 4, True, True)[0] == sizes[0]   # the head's work on this stage
    assert stage_tensor_backward_work(tied, 128, 4, True, False)[0] == 0


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


def test_gradients_are_reduced_in_fp32_by_default_under_bf16():
    """training.grad_reduce_dtype: null = fp32 for bf16/fp16 training (Megatron-LM's fp32 main gradients);
    the data-parallel all-reduce moves 4 bytes per gradient, bf16 half of that: ring closed form per bucket."""

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
        plan = bucket_sizes(chunk_tensors(cfg, [cfg.model.n_layers])[0], 25)       # the runtime's buckets
        closed = sum(2 * 7 * (alpha + s * psi * e / sum(plan) / (8 * bw)) for s in plan)
        assert r["comm_s"]["dp_total"] == pytest.approx(closed, rel=1e-6), dtype


def test_one_overlap_rule_for_gathers():
    """Prefetched one block ahead: the first gather shows, later ones by what outlasts the block before;
    just in time: every one shows."""

    assert exposed_gathers(32, 1.0, 0.4, prefetch=True) == pytest.approx(0.4)
    assert exposed_gathers(32, 1.0, 1.5, prefetch=True) == pytest.approx(1.5 + 31 * 0.5)
    assert exposed_gathers(32, 1.0, 0.4, prefetch=False) == pytest.approx(32 * 0.4)
    assert exposed_gathers(0, 1.0, 0.4, prefetch=True) == 0.0


def _zero(stage, system=None, **extra):

    cfg = load_config({"model": {"preset": "llama-7b"}, "seq_len": 2048,
                       "cluster": {"gpu": "a100-80gb", "num_gpus": 64},
                       "parallel": {"zero_stage": stage, "micro_batch_size": 2, "global_batch_size": 512, **extra}})
    return cfg, simulate(cfg, system=system)


def _plain(cfg, system=None):
    """The step's communication without contention (each collective alone): which collectives happen."""
    hw = hardware_for(cfg)
    return simulate_step(cfg, hw, CommModel(Cluster(hw, cfg.cluster.num_gpus)), system=system, contention=False)


def test_zero_semantics_per_system():
    """course: ZeRO-1/2 gather the new weights after the optimizer (exposed); FSDP2 gathers them block by
    block in every micro-batch's forward, prefetched, and reduce-scatters once after accumulating whole
    gradients; DeepSpeed's ZeRO-2 reduce-scatters after every micro-batch."""

    cfg, course = _zero(1)
    _, fsdp = _zero(1, "fsdp2")
    psi = sum(virtual_stage_params(cfg, [32]))
    comm = CommModel(Cluster(hardware_for(cfg), 64))
    assert course["comm_s"]["zero_gather"] == pytest.approx(comm.time("all_gather", range(64), 2 * psi), rel=1e-6)
    assert fsdp["comm_s"]["zero_gather"] == 0.0
    m = cfg.grad_accum_steps
    assert m == 4
    block = virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]
    first = comm.time("all_gather", range(64), 2 * block)
    # the first block's gather of every micro-batch's forward is exposed (compute hides the rest here); on
    # shared links it also shares the NIC with the previous micro-batch's last reduce-scatter (contention)
    assert _plain(cfg, "fsdp2").comm["gather_wait"] == pytest.approx(m * first, rel=0.05)
    assert fsdp["comm_s"]["gather_wait"] >= m * first * 0.999
    # what follows the last backward: the buckets ready only at its end, the embedding's (the runtime's plan:
    # its gradient alone) and those holding the first block's last tensors (the embedding's backward, a
    # lookup's, takes no time): the course's last three 25 MiB buckets, all-reduced, FSDP2's last two, the
    # first block's and the embedding's, reduce-scattered (half the ring's steps)
    for system, out, n_tail in ((None, course, 3), ("fsdp2", fsdp, 2)):
        sem = zero_semantics(cfg, system)
        sizes = grad_buckets(cfg, sem, [32], [psi], 4.0)[0]
        assert grad_bucket_ready(cfg, sem, [32])[0][-n_tail - 1] < 0.999      # the one before: hidden
        tail = sum(comm.time(sem.grad_collective, range(64), b) for b in sizes[-n_tail:])
        assert out["comm_s"]["dp_exposed"] == pytest.approx(tail, rel=0.05)
    assert zero_semantics(cfg).grad_collective == "all_reduce"              # the course's ZeRO-1
    assert zero_semantics(cfg, "fsdp2").grad_collective == "reduce_scatter"
    # ZeRO-3 under FSDP2: the forward gathers of ZeRO-2 plus the same again before each backward
    z2, _ = _zero(2)
    z3, _ = _zero(3)
    assert _plain(z3, "fsdp2").comm["gather_wait"] - _plain(z2, "fsdp2").comm["gather_wait"] == pytest.approx(
        m * first, rel=0.05)
    # DeepSpeed ZeRO-2: m reduce-scatters of the whole gradient per step, in its 500M-element buckets (the
    # runtime's plan over the model's tensors at that cap); the course's one, in its 25 MiB buckets
    _, ds = _zero(2, "deepspeed")
    _, c2 = _zero(2)
    tensors = chunk_tensors(cfg, [32])[0]
    wire = psi * grad_bytes_per_param(cfg)

    def reduce_scatters(cap):
        plan = bucket_sizes(tensors, cap)
        return sum(comm.time("reduce_scatter", range(64), b * wire / sum(plan)) for b in plan)

    assert ds["comm_s"]["dp_total"] == pytest.approx(m * reduce_scatters(DEEPSPEED_REDUCE_BUCKET * 4 / 2**20), rel=1e-6)
    assert c2["comm_s"]["dp_total"] == pytest.approx(reduce_scatters(25), rel=1e-6)
    assert ds["comm_s"]["dp_total"] > 2 * c2["comm_s"]["dp_total"]         # m = 4 reductions, not one


def test_deepspeed_2021_zero3_gathers_just_in_time_at_its_slowdown():
    """DeepSpeed 0.3/0.4's ZeRO-3 (system deepspeed_2021): every block gathered just in time, before its
    forward and its backward, and every ZeRO-3 collective k = DEEPSPEED_2021_ZERO3_SLOWDOWN times NCCL's time;
    at ZeRO-2 it is today's DeepSpeed."""
    cfg, _ = _zero(3)
    k = DEEPSPEED_2021_ZERO3_SLOWDOWN
    old, new = zero_semantics(cfg, "deepspeed_2021"), zero_semantics(cfg, "deepspeed")
    assert (old.prefetch, old.comm_slowdown, new.prefetch, new.comm_slowdown) == (False, k, True, 1.0)
    assert k > 1
    z2, _ = _zero(2)
    assert zero_semantics(z2, "deepspeed_2021").comm_slowdown == 1.0
    comm = CommModel(Cluster(hardware_for(cfg), 64))
    block = virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]
    first = comm.time("all_gather", range(64), 2 * block)
    m = cfg.grad_accum_steps
    plain_old, plain_new = _plain(cfg, "deepspeed_2021"), _plain(cfg, "deepspeed")
    assert plain_old.comm["gather_wait"] == pytest.approx(m * 2 * 32 * k * first, rel=1e-6)
    assert plain_old.comm["dp_total"] == pytest.approx(k * plain_new.comm["dp_total"], rel=1e-6)
    # on shared links: a slower step, and one gathered block held at a time instead of two
    old_run, new_run = simulate(cfg, system="deepspeed_2021"), simulate(cfg, system="deepspeed")
    assert old_run["step_time_s"] > new_run["step_time_s"] + m * 2 * 32 * (k - 1) * first * 0.9
    assert new_run["memory_per_gpu_bytes"]["total"] - old_run["memory_per_gpu_bytes"]["total"] == pytest.approx(
        2 * block, rel=0.01)


def test_fsdp_reduce_scatters_every_micro_batch_without_a_pipeline():
    """FSDP as torchtitan and Composer run it syncs gradients in every backward and keeps only its shard:
    m reduce-scatters per step. MosaicML trained MPT-7B this way on 8 A100-80GB (FULL_SHARD, micro-batch 6,
    batch 96: 2 micro-batches per rank); holding the whole fp32 gradient across them would not fit."""
    mpt = {"model": {"preset": None, "arch": "gpt", "vocab_size": 50368, "tie_embeddings": True, "dim": 4096,
                     "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "ffn_dim": 16384},
           "seq_len": 2048, "cluster": {"gpu": "a100-80gb", "num_gpus": 8},
           "training": {"precision": "bf16", "flash_attention": True},
           "parallel": {"zero_stage": 3, "implementation": "torch", "micro_batch_size": 6, "global_batch_size": 96}}
    cfg = load_config(mpt)
    assert cfg.grad_accum_steps == 2 and zero_semantics(cfg).reduce_every_micro_batch
    fsdp = simulate(cfg)
    assert fsdp["fits_in_memory"], fsdp["memory_per_gpu_bytes"]
    no_sync = simulate(cfg, system="course")                   # whole gradients until the last micro-batch
    psi = sum(virtual_stage_params(cfg, [32]))
    assert no_sync["memory_per_gpu_bytes"]["grads"] - fsdp["memory_per_gpu_bytes"]["grads"] == pytest.approx(
        4 * psi - 4 * (virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]), rel=1e-6)
    assert not no_sync["fits_in_memory"]
    roomy = load_config(mpt, ["cluster.memory_GB=200"])
    one = load_config(mpt, ["cluster.memory_GB=200", "parallel.global_batch_size=48"])     # 1 micro-batch
    assert simulate(roomy)["comm_s"]["dp_total"] == pytest.approx(2 * simulate(one)["comm_s"]["dp_total"], rel=1e-6)
    # one reduce-scatter per block (an FSDP unit), not per 25 MB bucket
    block = virtual_stage_params(cfg, [1, 0])[0] - virtual_stage_params(cfg, [0, 0])[0]
    assert reduce_bucket_mb(cfg, zero_semantics(cfg), block) == pytest.approx(4 * block / 2**20)
    piped = load_config(mpt, ["parallel.pp=2", "parallel.zero_stage=1", "parallel.global_batch_size=48"],
                        runtime=False)                          # torch's FSDP under a pipeline: not in our runtime
    assert not zero_semantics(piped).reduce_every_micro_batch   # torch's pipeline schedules reduce once
