"""The step on shared links (simulator.streams) against the step without contention and against closed forms."""

import pytest

import simulator.contention as contention
from simulator.collectives import CommModel
from simulator.config import load_config
from simulator.data_parallel import zero_semantics
from simulator.hardware import hardware_for
from simulator.parallel_3d import Layout, simulate_step
from simulator.simulate import simulate
from simulator.topology import Cluster
from simulator.traffic import SymmetricCopies


def _cfg(training=None, runtime=True, **parallel):
    raw = {"model": {"preset": "llama-7b"}, "seq_len": 2048, "cluster": {"gpu": "a100-80gb", "num_gpus": 64},
           "parallel": {"tp": 8, "pp": 4, "micro_batch_size": 1, "global_batch_size": 16, **parallel},
           "training": training or {}}
    return load_config(raw, runtime=runtime)


def _step(cfg, contention_on=True, record=False, **hw):
    hardware = hardware_for(cfg).with_overrides(**hw)
    return simulate_step(cfg, hardware, CommModel(Cluster(hardware, cfg.cluster.num_gpus)), record=record,
                         contention=contention_on)


@pytest.mark.parametrize("parallel", [{"tp": 8, "pp": 1, "global_batch_size": 64},       # data parallel, buckets
                                      {"tp": 8, "pp": 8, "global_batch_size": 16},      # a pipeline, no dp
                                      {"tp": 8, "pp": 4, "global_batch_size": 16, "schedule": "zero_bubble"}])
def test_without_anything_overlapping_the_streams_are_the_plain_step(monkeypatch, parallel):
    """No compute slowdown and no two transfers on one link: the streams give exactly the step of
    simulate_pipeline + gradient_sync (each activity keeps its alone time)."""
    monkeypatch.setattr(contention, "COMM_SM_SHARE", 0.0)
    cfg = _cfg(**parallel)
    plain, streams = _step(cfg, False), _step(cfg, True)
    assert streams.step_time == pytest.approx(plain.step_time, rel=1e-9)
    assert streams.comm["dp_total"] == pytest.approx(plain.comm["dp_total"], rel=1e-9)


def test_gradient_buckets_beside_the_backward_slow_it_by_the_sm_share(monkeypatch):
    # buckets reduced faster than the backward makes them (bf16 gradients, 8 x 2048 tokens per micro-batch)
    cfg = _cfg({"grad_reduce_dtype": "bf16"}, tp=8, pp=1, micro_batch_size=8, global_batch_size=512)
    monkeypatch.setattr(contention, "COMM_SM_SHARE", 0.0)
    free = _step(cfg)
    monkeypatch.setattr(contention, "COMM_SM_SHARE", 0.15)
    slowed = _step(cfg)
    lost = slowed.comm["overlap_slowdown"]
    assert free.comm["overlap_slowdown"] == pytest.approx(0.0, abs=1e-12) and lost > 0
    # the buckets run beside the last backward: it ends `lost` later, and so does the step
    assert slowed.step_time - free.step_time == pytest.approx(lost, rel=1e-6)
    # at most the share of the compute that ran beside communication
    assert lost <= 0.15 / 0.85 * slowed.comm["dp_total"]


def test_a_send_beside_a_gradient_ring_gets_half_the_nic(monkeypatch):
    """Pipeline ranks that finish early reduce their gradients while the drain's gradient sends still go
    through their NICs: a send that runs entirely inside its rank's ring takes twice its alone time."""
    monkeypatch.setattr(contention, "COMM_SM_SHARE", 0.0)
    cfg = _cfg(tp=8, pp=4, global_batch_size=16, bucket_mb=1000)
    step = _step(cfg, record=True)
    run = step.pipeline
    layout = Layout(8, 2, 4, 1)
    comm = CommModel(Cluster(hardware_for(cfg), 64))
    a = 2048 * cfg.model.dim * 2 / 8
    group = layout.pp_group()
    alone = {(src, dst): comm.time("send", (group[src], group[dst]), a) for src, dst, *_ in run.sends}
    inside = [(src, dst, end - start) for src, dst, _, _, start, end in run.sends
              if any(s <= start and end <= e for s, e in run.dp_spans.get(src, []))]
    assert inside, "no send overlapped a gradient ring"
    for src, dst, took in inside:
        assert took == pytest.approx(2 * alone[(src, dst)], rel=1e-6)
    outside = [end - start for src, dst, _, _, start, end in run.sends
               if not any(s < end and start < e for r in (src, dst) for s, e in run.dp_spans.get(r, []))]
    assert outside and all(t == pytest.approx(min(alone.values()), rel=1e-6) for t in outside)


def test_fat_tree_and_rail_optimized_differ_only_when_oversubscribed(monkeypatch):
    """Pipeline sends go from GPU i of a node to GPU i of a node 16 nodes on (dp 16): across 16-node leaves in a
    fat tree, on one rail switch when rail-optimized. Non-blocking, both fabrics give the same step; at 2:1
    every send crosses a halved uplink in the fat tree and the step gets longer; the rails are unaffected."""
    cfg = load_config({"model": {"preset": "llama-7b"}, "seq_len": 2048, "cluster": {"gpu": "a100-80gb", "num_gpus": 512},
                       "parallel": {"tp": 8, "pp": 4, "micro_batch_size": 4, "global_batch_size": 512}})
    steps = {(topo, r): _step(cfg, topology=topo, oversubscription=r).step_time
             for topo in ("fat_tree", "rail_optimized") for r in (1.0, 2.0)}
    assert steps[("fat_tree", 1.0)] == pytest.approx(steps[("rail_optimized", 1.0)], rel=1e-9)
    assert steps[("rail_optimized", 2.0)] == pytest.approx(steps[("rail_optimized", 1.0)], rel=1e-9)
    assert steps[("fat_tree", 2.0)] > steps[("fat_tree", 1.0)] * 1.001


def test_send_copies_count_every_replica_on_the_uplink():
    """The send of stage 0's simulated GPU stands for all 8 x 16 of its stage's sends; at 2:1 they leave leaf 0
    together, so one send takes twice its time alone."""
    hw = hardware_for(_cfg()).with_overrides(oversubscription=2.0)
    cl = Cluster(hw, 512)
    comm = CommModel(cl)
    alone = comm.time("send", (0, 128), 1e8)
    copies = SymmetricCopies(cl, ((8, 1), (16, 8)))
    lat = cl.path_latency(0, 128)
    assert comm.time_with_copies("send", (0, 128), 1e8, copies) - lat == pytest.approx(2 * (alone - lat), rel=1e-6)


def test_deepspeed_sends_block_the_sender(monkeypatch):
    """DeepSpeed's pipeline engine runs its send instruction before the next one: every send of the rank is
    waited for (no data parallelism here, so each keeps its alone time); Megatron-LM's and torch's
    schedules start the next task beside it."""
    monkeypatch.setattr(contention, "COMM_SM_SHARE", 0.0)
    cfg = _cfg(tp=8, pp=8, global_batch_size=16)
    hw = hardware_for(cfg)
    comm = CommModel(Cluster(hw, 64))
    plain = simulate_step(cfg, hw, comm, contention=True, record=True)
    ds = simulate_step(cfg, hw, comm, contention=True, record=True, system="deepspeed")
    assert plain.comm["send_wait"] == 0.0
    r = ds.critical_rank
    mine = [end - start for src, _, _, _, start, end in ds.pipeline.sends if src == r]
    assert mine and ds.comm["send_wait"] == pytest.approx(sum(mine), rel=1e-9)
    assert ds.step_time > plain.step_time


def test_fsdp_sharded_reduce_scatters_every_micro_batch_under_a_pipeline():
    """Llama 3's FSDP keeps the weights gathered across micro-batches under its pipeline (as torch's
    schedules do) but reduce-scatters fp32 gradients after every micro-batch into the shard: m reductions per
    step and no whole gradient held, where fsdp2 (torch's pipelining) holds them whole and reduces once."""
    # ZeRO-2 under a pipeline: other systems' runs, not the course runtime's (simulator/capabilities.py)
    cfg = _cfg(tp=8, pp=4, zero_stage=2, implementation="torch", global_batch_size=32, runtime=False)  # dp 2, m 16
    assert cfg.grad_accum_steps == 16
    assert not zero_semantics(cfg, "fsdp2").reduce_every_micro_batch
    assert zero_semantics(cfg, "fsdp_sharded").reduce_every_micro_batch
    once, every = simulate(cfg, system="fsdp2"), simulate(cfg, system="fsdp_sharded")
    assert every["comm_s"]["dp_total"] == pytest.approx(16 * once["comm_s"]["dp_total"], rel=1e-6)
    assert every["memory_per_gpu_bytes"]["grads"] < once["memory_per_gpu_bytes"]["grads"] / 2


def test_zero_bubble_fills_the_bubble_with_weight_gradients(monkeypatch):
    """Zero bubble runs the same compute as 1F1B in less bubble: each W is its stage's weight gradient (what
    `stage_costs` split off the backward), and a chunk's gradient buckets leave after its last W."""
    monkeypatch.setattr(contention, "COMM_SM_SHARE", 0.0)
    one, zb = (_step(_cfg(pp=8, global_batch_size=32, schedule=s), record=True) for s in ("1f1b", "zero_bubble"))
    assert zb.breakdown["compute"] == pytest.approx(one.breakdown["compute"])
    assert zb.breakdown["bubble"] < 0.8 * one.breakdown["bubble"]
    assert zb.step_time < one.step_time
    ws = [t for t in zb.pipeline.tasks if t.kind == "W"]
    assert len(ws) == 8 * 32                                    # p ranks x m micro-batches (dp 1, micro-batch 1)
    for t in ws:
        assert t.end - t.start == pytest.approx(zb.backward[t.rank].weight_grad)
        assert 0 < zb.backward[t.rank].weight_grad < zb.backward[t.rank].compute
    last_w = max(t.end for t in ws if t.rank == 0)
    assert zb.pipeline.last_backward[(0, 0)][1] == pytest.approx(last_w)
