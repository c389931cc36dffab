"""`llama-course compress CHECKPOINT --method M --out DIR [--set key=value ...]`: prune, quantize or distill a
checkpoint (the techniques: compression/model_compression.py and its siblings), then say what it achieved:
the stored parameter bytes and the held-out loss before and after (as `llama-course eval` measures them).

    llama-course compress runs/demo/checkpoints --method int8 --out runs/int8
"""

from __future__ import annotations

from llama_course.compression.model_compression import compress


def cli(args) -> int:
    from llama_course.commands.eval import evaluate_checkpoint, held_out_words

    compress(args.checkpoint, args.method, args.out, args.overrides or [])      # prints "METHOD: wrote OUT"
    before, after = evaluate_checkpoint(args.checkpoint), evaluate_checkpoint(args.out)
    ratio = before["params_bytes"] / max(after["params_bytes"], 1)
    print(f"  parameter bytes  {before['params_bytes']:,} -> {after['params_bytes']:,} ({ratio:.2f}x smaller)\n"
          f"  held-out loss    {before['val_loss']:.4f} -> {after['val_loss']:.4f} "
          f"({after['val_loss'] - before['val_loss']:+.4f}; {held_out_words(after)})")
    return 0
