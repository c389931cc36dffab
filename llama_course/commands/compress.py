"""`llama-course compress CHECKPOINT --method M --out DIR [--set key=value ...]`: prune, quantize or distill a
checkpoint (the techniques: compression/model_compression.py and its siblings)."""

from __future__ import annotations

from llama_course.compression.model_compression import compress


def cli(args) -> int:
    compress(args.checkpoint, args.method, args.out, args.overrides or [])
    return 0
