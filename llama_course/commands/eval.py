"""`llama-course eval CHECKPOINT [--json]`: held-out loss, perplexity and the bytes the weights really take.

    llama-course eval runs/demo/checkpoints --json

val_loss is the mean next-token cross-entropy over the whole held-out split of the checkpoint's corpus
(whole documents the run never trained on; val_sequences sequences of seq_len tokens in val_batches
batches of 8): the same number `make demo` reports as its held-out loss. (The val_loss that `train` logs
every eval_every steps is a cheaper sample: the first eval_batches micro-batches of the same split.)
perplexity = exp(val_loss), n_params counts tied weights once (and a quantized matrix as its in x out
weights), params_bytes is the size of the stored tensors of model.pt (a quantized checkpoint really is
smaller; zeros of unstructured pruning still take their bytes), sparsity the fraction of exactly-zero
weights in the transformer blocks' matmuls (what `compress --method prune` targets; embeddings and head are
never pruned), and forward_flops_per_token counts the real matrix shapes (structured pruning lowers it,
unstructured pruning and quantization do not).
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch

from llama_course.compression.model_compression import block_sparsity, count_weights, forward_flops_per_token
from llama_course.core.checkpoint import load_model, resolve_path
from llama_course.core.evaluate import held_out_loss, tensor_bytes


def evaluate_checkpoint(path: str, log=None) -> dict:
    """The `eval --json` object of a checkpoint folder (or a --checkpoint-dir root: its newest intact one).
    `log` (a print-like function) is told what is being evaluated before the work starts."""
    folder = resolve_path(path)
    model, cfg, _ = load_model(folder)
    if log:
        log(f"eval: {folder}: held-out loss over the whole validation split of {cfg.data.corpus} "
            f"(seq_len {cfg.seq_len}) ...")
    held = held_out_loss(model, cfg)
    state = torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=True)
    return {"checkpoint": folder, **held, "perplexity": math.exp(held["val_loss"]), "n_params": count_weights(model),
            "params_bytes": tensor_bytes(state), "sparsity": block_sparsity(model),
            "forward_flops_per_token": forward_flops_per_token(model, cfg.seq_len)}


def held_out_words(result: dict) -> str:
    """How much text a held-out loss was measured on, in words (the demo and eval say it the same way)."""
    return (f"the whole held-out split: {result['val_sequences']} sequences, {result['val_tokens']:,} tokens, "
            f"in {result['val_batches']} batches")


def cli(args) -> int:
    result = evaluate_checkpoint(args.checkpoint, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"checkpoint   {result['checkpoint']}")
        print(f"val_loss     {result['val_loss']:.4f}   ({held_out_words(result)})")
        print(f"perplexity   {result['perplexity']:.2f}")
        print(f"n_params     {result['n_params']:,}")
        print(f"params_bytes {result['params_bytes']:,}")
        print(f"sparsity     {result['sparsity']:.1%}")
    return 0
