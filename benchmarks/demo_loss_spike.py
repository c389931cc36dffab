"""Replay the first steps of `make demo`'s run and watch for a loss spike (model.reset_parameters explains it).

    python benchmarks/demo_loss_spike.py                        # the model's init: no spike
    python benchmarks/demo_loss_spike.py --output-std 0.02      # the old init: 5.3 -> 8.4 at step 23
    python benchmarks/demo_loss_spike.py --output-std 0.02 --set training.grad_clip=0.25   # still spikes

The demo trains configs/tiny.yaml for 400 steps on 2 processes; its loss is the mean over the global batch, so
one process replays it (the learning rate follows the 400-step schedule). Each step prints the loss, the
gradient norm, and the size of the last layer's output (the residual stream the final RMSNorm normalises):
its rms, and the rms of its mean over all positions (equal to it when every position holds the same vector,
as once the model has learnt the unigram distribution). The last line: the first loss, the largest loss
after step 5 and the largest rise above the lowest loss so far.
"""

from __future__ import annotations

import torch

from llama_course.commands.demo import CONFIG, demo_overrides
from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
from llama_course.core.distributed import cleanup, init_distributed
from llama_course.core.model import build_model
from llama_course.core.optimizers import lr_at
from llama_course.engine import build_engine
from simulator.cli_args import Parser
from simulator.config import load_config


def main() -> None:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--output-std", type=float,
                    help="rescale the output head's draw to this std (0.02: exactly the old init)")
    ap.add_argument("--embedding-std", type=float, help="rescale the token embedding's draw (0.02) to this std")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(CONFIG, demo_overrides(400) + ["cluster.num_gpus=1", "parallel.dp=null"] + args.overrides)
    p = cfg.parallel
    ctx = init_distributed(1, 1, 1, mesh_world=1)
    try:
        torch.manual_seed(cfg.training.seed)
        seqs = pack(load_tokens(cfg).train, cfg.seq_len)
        sampler = BatchSampler(len(seqs), p.global_batch_size, cfg.training.seed)
        model = build_model(cfg)
        with torch.no_grad():          # the same random draws, scaled: exactly another init's weights
            if args.output_std is not None:
                model.output.weight.mul_(args.output_std * cfg.model.dim ** 0.5)
            if args.embedding_std is not None:
                model.tok_embeddings.weight.mul_(args.embedding_std / 0.02)
        last = {}
        model.layers[-1].register_forward_hook(lambda m, i, out: last.__setitem__("h", out.detach()))
        engine = build_engine(cfg, ctx, model)
        losses = []
        for step in range(args.steps):
            batches = [get_batch(seqs, idx) for idx in sampler.shard(step, 0, 1, p.micro_batch_size)]
            out = engine.train_step(batches, lr_at(step, cfg))       # the hook sees this step's forward
            losses.append(out["loss"])
            h = last["h"]
            print(f"step {step + 1:3d}  lr {lr_at(step, cfg):.2e}  loss {out['loss']:.3f}  grad_norm "
                  f"{out['grad_norm']:.3f}  last hidden rms {h.pow(2).mean().sqrt():6.3f}, of its mean over positions "
                  f"{h.mean((0, 1)).pow(2).mean().sqrt():6.3f}", flush=True)
        rise = max(losses[i] - min(losses[:i]) for i in range(5, len(losses)))
        worst = max(losses[5:])
        print(f"first loss {losses[0]:.3f}; largest after step 5 {worst:.3f} (step {losses.index(worst) + 1}); "
              f"largest rise over the lowest so far {rise:+.3f}; loss at step {len(losses)} {losses[-1]:.3f}")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
