"""`llama-course generate CHECKPOINT --prompt TEXT`: sample text from a trained model with a KV cache.

    llama-course generate runs/demo/checkpoints --prompt "The for statement" --max-new-tokens 80

Tokens are drawn one at a time from softmax(logits / temperature) over the top-k candidates; the prompt
is encoded once (prefill) and each new token attends to the cached keys and values of all earlier ones.
"""

from __future__ import annotations

import torch

from simulator.config import ConfigError


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                  top_k: int | None = 50, seed: int = 0) -> str:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("--prompt: the prompt is empty")
    ids = ids[-(model.max_seq_len - 1):]
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k, generator=gen)
    return tokenizer.decode(out[0].tolist())


def cli(args) -> int:
    from llama_course.core.checkpoint import load_model

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be positive, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature: must not be negative, got {args.temperature}")
    model, cfg, tokenizer = load_model(args.checkpoint)
    if tokenizer is None:
        raise ConfigError(f"{args.checkpoint}: the checkpoint has no tokenizer (trained on token shards?)")
    print(generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed))
    return 0
