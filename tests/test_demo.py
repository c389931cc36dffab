"""`make demo`'s training run: its loss curve has no spike (the first plot a newcomer sees).

The demo trains configs/tiny.yaml for 400 steps with 2 processes; its loss is the mean over the global
batch, so one process replays the same run. The spike it had (5.3 -> 8.4 at step 23, right after warmup
reached the peak learning rate) came in the first 30 steps; this test replays the first 60 steps of the
demo's schedule (the learning rate of a 400-step run) and asserts the loss never rises above its first value
after step 5, nor more than a little above its lowest value so far.
"""

import torch

from llama_course.commands.demo import CONFIG, demo_overrides
from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
from llama_course.core.distributed import cleanup, init_distributed
from llama_course.core.model import build_model
from llama_course.core.optimizers import lr_at
from llama_course.engine import build_engine
from simulator.config import load_config

STEPS = 60


def demo_losses(steps: int) -> list:
    """The first `steps` losses of the demo's run (its config and schedule), replayed on one process."""
    cfg = load_config(CONFIG, demo_overrides(400) + ["cluster.num_gpus=1", "parallel.dp=null"])
    p = cfg.parallel
    ctx = init_distributed(1, 1, 1, mesh_world=1)
    try:
        torch.manual_seed(cfg.training.seed)
        seqs = pack(load_tokens(cfg).train, cfg.seq_len)
        sampler = BatchSampler(len(seqs), p.global_batch_size, cfg.training.seed)
        engine = build_engine(cfg, ctx, build_model(cfg))
        losses = []
        for step in range(steps):
            batches = [get_batch(seqs, idx) for idx in sampler.shard(step, 0, 1, p.micro_batch_size)]
            losses.append(engine.train_step(batches, lr_at(step, cfg))["loss"])
        return losses
    finally:
        cleanup()


def test_demo_loss_has_no_spike():
    losses = demo_losses(STEPS)
    assert losses[0] > 6.0                                   # about ln(512) = 6.24 or more: a fresh model
    assert max(losses[5:]) <= losses[0], [round(x, 3) for x in losses]
    rises = [losses[i] - min(losses[:i]) for i in range(5, STEPS)]
    assert max(rises) < 0.3, [round(x, 3) for x in losses]   # the spike rose 3.1 above the lowest loss so far
    assert losses[-1] < losses[0] - 1.0                      # and it learns
