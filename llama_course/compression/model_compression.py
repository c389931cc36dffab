"""Model compression (concept 12): pruning, quantization and distillation of a trained LLaMA.

Seed questions 3 and 5. The article says pruning "deletes redundant neurons and weights to reduce
computation" and that compression "improves distributed training efficiency". Both are only half true:

- Unstructured magnitude pruning zeroes the individual weights of smallest |w|. The matrices keep their
  shape, so a dense matmul costs exactly the same FLOPs and the file the same bytes; only sparse kernels
  (or 2:4 sparse tensor cores, up to ~2x) turn zeros into speed. `sparsity=s` zeroes a fraction s of the
  transformer blocks' matmul weights (wq wk wv wo w1 w2 w3); embeddings and the output head stay dense.
  `scope=layer` (default) prunes every matrix to exactly s; `scope=global` uses one threshold over all of
  them (the matrices with small weights, here wo and w2 whose init is scaled by 1/sqrt(2 l), lose more).
- Structured pruning removes whole attention heads and FFN channels, so the matrices really shrink:
  removing a fraction r of the FFN channels removes r of the MLP's 3 d f weights and 6 d f training
  FLOPs per token. Heads: with grouped-query attention each k/v head serves n_heads/n_kv_heads query
  heads; the same number of query heads is kept in every group (or whole groups when there is one query
  head per group). Scores: ||w_in row|| x ||w_out column|| of a channel or head, per layer.
  The new per-layer shapes are recorded in the checkpoint's `compression.layers`.
- Quantization (int8 per output channel, int4 per group) stores weights in 8 or 4 bits plus fp16 scales;
  see `quantization.py`. It shrinks memory and memory traffic, not FLOPs (weights are dequantized).
- Distillation trains a smaller student (fewer layers, or narrower) on the teacher's softened outputs:

      loss = alpha T^2 KL(softmax(z_T / T) || softmax(z_S / T)) + (1 - alpha) CE(y, z_S)

  T^2 keeps the soft term's gradients the same size as T changes (Hinton et al. 2015).

None of this makes *training* the original model cheaper: training-time relatives are mixed precision,
8-bit optimizer states, QLoRA (adapters on a frozen 4-bit base) and gradient compression (concept 11).
Compression pays at deployment (memory, bandwidth) and, for structured pruning and distillation, FLOPs.

    llama-course compress CKPT --method prune --out runs/p50 --set sparsity=0.5 --set finetune_steps=50
    llama-course compress CKPT --method prune --out runs/s50 --set sparsity=0.5 --set structured=true
    llama-course compress CKPT --method int8  --out runs/int8
    llama-course compress CKPT --method int4  --out runs/int4 --set group_size=32
    llama-course compress CKPT --method distill --out runs/student --set student_layers=2 --set steps=300
    llama-course eval runs/int8 --json            # val_loss, params_bytes, sparsity
    llama-course train runs/p50/config.yaml --set training.init_from=runs/p50   # fine-tune further

The techniques live in siblings: `pruning.py`, `quantization.py`, `distillation.py`; this file holds the
command, its options (`--set key=value`, by method: `OPTIONS`), the short training loop both fine-tuning
and distillation use, and the checkpoint format: the usual folder (manifest.json with the config and
sha256 of every file, model.pt, tokenizer.json) plus a `compression` section in the manifest

    {"method": ..., "layers": [{"n_heads", "n_kv_heads", "ffn_dim"} per block]      (structured pruning)
     "quantization": {"bits", "group_size", "modules"}, "sparsity": {"target", "scope", "measured"},
     "history": [{"method", "options", "source", ...} per compression applied]}

for the reader (`checkpoint.load_model` rebuilds the shapes from model.pt's tensors alone, `model_from_state`),
and a config.yaml to train on.
The simulator's side is `simulator/model_compression.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import torch
from torch import nn

from llama_course.compression.distillation import distillation_loss, make_student
from llama_course.compression.pruning import (
    apply_masks,
    block_sparsity,
    forward_flops_per_token,
    magnitude_masks,
    prunable,
    shrink,
    structured_plan,
)
from llama_course.core import quantization as quant
from llama_course.core.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    load_model,
    resolve_path,
    sha256,
)
from llama_course.core.data import BatchSampler, get_batch, load_tokens, pack
from llama_course.core.distributed import Context
from llama_course.core.evaluate import evaluate_model
from llama_course.core.model import num_params
from llama_course.core.train_step import Engine
from simulator.config import ConfigError
from simulator.config_checks import check_writable

# method -> {option: (default, meaning)}; "cfg" defaults are read from the checkpoint's config
_TRAIN = {"lr": (None, "learning rate of the fine-tune / student (default: training.lr / 10 to fine-tune, "
                       "training.lr to distill)"),
          "batch_size": (None, "sequences per step (default: the checkpoint's parallel.global_batch_size)"),
          "seed": (0, "seed of data order and student initialisation")}
OPTIONS = {
    "prune": {"sparsity": (0.5, "fraction in [0, 1) of weights (unstructured) or heads and FFN channels "
                                "(structured) to remove"),
              "structured": (False, "remove whole heads and FFN channels (shapes shrink) instead of single weights"),
              "scope": ("layer", "unstructured: `layer` prunes every matrix to the target, `global` one threshold"),
              "prune_heads": (True, "structured: prune attention heads as well as FFN channels"),
              "finetune_steps": (0, "steps of fine-tuning after pruning; the pruned weights stay zero"), **_TRAIN},
    "int8": {"group_size": (None, "inputs per scale (default: one scale per output channel)")},
    "int4": {"group_size": (64, "inputs per scale; must divide every matrix's input dimension (default: "
                                "the largest of 64, 32, 16, ... that does)")},
    "distill": {"student_layers": (None, "student depth (default: half the teacher's layers)"),
                "student_dim": (None, "student width (default: the teacher's)"),
                "student_ffn_dim": (None, "student MLP width (default: the teacher's, scaled with the width)"),
                "temperature": (2.0, "softmax temperature T of the soft targets"),
                "alpha": (0.5, "weight of the soft (KL x T^2) term; 1 - alpha weighs the hard-label CE"),
                "steps": (200, "student training steps"),
                "init": ("auto", "`teacher` (copy embeddings, head and evenly spaced blocks), `random`, or `auto` "
                                 "(teacher when the widths match)"), **_TRAIN},
}


def count_weights(model: nn.Module) -> int:
    """Parameters as the model sees them (a quantized matrix counts its in x out weights; tied ones once)."""
    return num_params(model) + sum(m.in_features * m.out_features for m in model.modules()
                                   if isinstance(m, quant.QuantizedWeight))


# ---------------------------------------------------------------------------------------------
# a short single-process training loop (fine-tune after pruning, distillation)
# ---------------------------------------------------------------------------------------------

def train_steps(model: nn.Module, cfg, steps: int, lr: float, batch_size: int, seed: int = 0, loss_fn=None,
                masks: dict | None = None) -> list:
    """Fine-tune (after pruning) or train a student (distillation) with the engine's train_step, one
    process: torch AdamW (betas 0.9/0.95, no weight decay), fp32, 10% linear warmup then cosine to lr/10,
    clipped at training.grad_clip, on the checkpoint's corpus. loss_fn(logits, targets, tokens) replaces
    the next-token cross-entropy. Returns the losses."""
    if steps <= 0:
        return []
    data = load_tokens(cfg)
    seqs = pack(data.train, cfg.seq_len)
    batch_size = min(batch_size, len(seqs))
    sampler = BatchSampler(len(seqs), batch_size, seed)
    t = cfg.training
    tune = dataclasses.replace(
        cfg, training=dataclasses.replace(t, optimizer="adamw", beta1=0.9, beta2=0.95, weight_decay=0.0,
                                          precision="fp32", compile=False, on_nonfinite="skip"),
        parallel=dataclasses.replace(cfg.parallel, implementation="torch", dp=1, tp=1, pp=1, zero_stage=0,
                                     micro_batch_size=batch_size, global_batch_size=batch_size,
                                     activation_checkpointing="none"),
        faults=dataclasses.replace(cfg.faults, slow={}))
    engine = Engine(tune, Context(), model, loss_fn=loss_fn)
    handles = apply_masks(model, masks) if masks else []
    warmup = max(1, steps // 10)
    losses = []
    model.train()
    try:
        for step in range(steps):
            progress = max(0, step - warmup) / max(1, steps - warmup)
            lr_now = lr * (step + 1) / warmup if step < warmup else lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
            losses.append(engine.train_step([get_batch(seqs, sampler.global_batch(step))], lr_now)["loss"])
    finally:
        for h in handles:
            h.remove()
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------
# checkpoints: rebuild, save, load for training
# ---------------------------------------------------------------------------------------------

def save(out: str, model: nn.Module, cfg, tokenizer, compression: dict) -> str:
    """Write a checkpoint folder (manifest with config + compression + sha256, model.pt, tokenizer.json,
    config.yaml) into out.tmp, then rename it to `out` (a crash leaves no half-written checkpoint)."""
    import yaml


    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if cfg.model.tie_embeddings and "output.weight" in state:       # one storage for the tied matrix
        state["output.weight"] = state["tok_embeddings.weight"]
    atomic_torch_save(state, os.path.join(tmp, "model.pt"))
    if tokenizer is not None:
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
    atomic_write_text(os.path.join(tmp, "config.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    files = {name: sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
    manifest = {"step": 0, "world_size": 1, "engine": "compressed", "layout": {"dp": 1, "tp": 1, "pp": 1},
                "config": cfg.to_dict(), "compression": compression, "files": files}
    atomic_write_text(os.path.join(tmp, "manifest.json"), json.dumps(manifest, indent=1))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_for_training(path: str, cfg) -> nn.Module:
    """The model `train --set training.init_from=PATH` starts from: quantized matrices dequantized to float
    (an optimizer needs float weights: training low-bit weights directly is quantization-aware training or
    QLoRA-style adapters, not done here), pruned shapes kept, and the zeros of an unstructured-pruned
    checkpoint kept zero (masked gradients)."""
    model, ck_cfg, _ = load_model(path)
    if ck_cfg.model != cfg.model:
        diff = [f"{k} {getattr(ck_cfg.model, k)} (config: {getattr(cfg.model, k)})" for k in vars(cfg.model)
                if getattr(ck_cfg.model, k) != getattr(cfg.model, k)]
        raise ConfigError(f"training.init_from: the checkpoint's model differs: {', '.join(diff)}; "
                          f"train with its config.yaml")
    m = cfg.model
    pruned = any((b.attention.n_heads, b.attention.n_kv_heads, b.feed_forward.w1.out_features)
                 != (m.n_heads, m.n_kv_heads, m.ffn_dim) for b in model.layers)
    if pruned and (cfg.parallel.tp > 1 or cfg.parallel.pp > 1):
        raise ConfigError("training.init_from: a structurally pruned model trains with data parallelism only "
                          "(tp = pp = 1)")
    quant.dequantize_model(model)
    if (getattr(model, "compression", None) or {}).get("sparsity"):
        apply_masks(model, {n: w != 0 for n, w in prunable(model).items()})
    return model


# ---------------------------------------------------------------------------------------------
# the command: llama-course compress CHECKPOINT --method M --out DIR [--set key=value ...]
# ---------------------------------------------------------------------------------------------

def parse_options(method: str, items: list) -> dict:
    """Method options from `key=value` strings (values read as YAML), checked; ConfigError names the key."""
    import yaml

    known = OPTIONS[method]
    opts = {k: default for k, (default, _) in known.items()}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in known:
            raise ConfigError(f"--set {key}: not an option of --method {method} (known: {', '.join(known)})")
        try:
            opts[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: value '{text}' is not valid YAML") from None
    _check_options(method, opts, {k for k in (i.split("=", 1)[0].strip() for i in items)})
    return opts


def _check_options(method: str, o: dict, given: set) -> None:
    def number(key, integer=False, low=None, high=None, low_open=False, high_open=True):
        v = o[key]
        if v is None:
            return
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (not integer or v == int(v))
        if not ok or (low is not None and (v <= low if low_open else v < low)) or \
                (high is not None and (v >= high if high_open else v > high)):
            kind = "an integer" if integer else "a number"
            lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
            span = f" in {lo}{high}{')' if high_open else ']'}" if high is not None else (
                f" {'>' if low_open else '>='} {low}" if low is not None else "")
            raise ConfigError(f"{key}: expected {kind}{span}, got {v!r}")
        if integer:
            o[key] = int(v)

    for key in ("structured", "prune_heads"):
        if key in o and not isinstance(o[key], bool):
            raise ConfigError(f"{key}: expected true or false, got {o[key]!r}")
    if method == "prune":
        number("sparsity", low=0, high=1)
        number("finetune_steps", integer=True, low=0)
        if o["scope"] not in ("layer", "global"):
            raise ConfigError(f"scope: '{o['scope']}' is not one of layer, global")
        if o["structured"] and "scope" in given:
            raise ConfigError("scope: applies to unstructured pruning only (structured prunes each layer)")
    if method in ("int8", "int4"):
        number("group_size", integer=True, low=0, low_open=True, high=None)
    if method == "distill":
        for key in ("student_layers", "student_dim", "student_ffn_dim"):
            number(key, integer=True, low=0, low_open=True)
        number("temperature", low=0, low_open=True)
        number("alpha", low=0, high=1, high_open=False)
        number("steps", integer=True, low=0)
        if o["init"] not in ("auto", "teacher", "random"):
            raise ConfigError(f"init: '{o['init']}' is not one of auto, teacher, random")
    if "lr" in o:
        number("lr", low=0, low_open=True)
        number("batch_size", integer=True, low=0, low_open=True)
        number("seed", integer=True, low=0)


def compress(checkpoint: str, method: str, out: str, overrides: list = (), log=print) -> dict:
    """Compress a checkpoint into the folder `out`; returns the `compression` section written."""
    opts = parse_options(method, list(overrides))
    source = resolve_path(checkpoint)
    if os.path.abspath(out) == os.path.abspath(source):
        raise ConfigError("--out: must differ from the checkpoint being compressed")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "manifest.json")):
        raise ConfigError(f"--out: {out} exists and is not a checkpoint folder (it would be replaced); choose a new one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out: {out} is a file; give a folder for the compressed checkpoint")
    check_writable("--out", os.path.join(out, "manifest.json"))
    model, cfg, tokenizer = load_model(source)
    before = dict(getattr(model, "compression", None) or {})
    if before.get("quantization"):
        raise ConfigError(f"{checkpoint}: already quantized; prune or distill the float checkpoint and quantize last")
    batch = opts.get("batch_size") or cfg.parallel.global_batch_size
    record = {"method": method, "options": opts, "source": os.path.abspath(source)}
    if method == "prune":
        s = opts["sparsity"]
        lr = opts["lr"] or cfg.training.lr / 10
        if opts["structured"]:
            dense_flops = forward_flops_per_token(model, cfg.seq_len)
            before["layers"] = shrink(model, structured_plan(model, s, opts["prune_heads"]))
            record["flops_ratio"] = forward_flops_per_token(model, cfg.seq_len) / dense_flops
            masks = None
        else:
            masks = magnitude_masks(model, s, opts["scope"])
            apply_masks(model, masks)
            before["sparsity"] = {"target": s, "scope": opts["scope"], "measured": block_sparsity(model)}
        if opts["finetune_steps"]:
            record["val_loss_before_finetune"] = evaluate_model(model, cfg)
            record["finetune_losses"] = train_steps(model, cfg, opts["finetune_steps"], lr, batch, opts["seed"],
                                                    masks=masks)
    elif method in ("int8", "int4"):
        bits = 8 if method == "int8" else 4
        names = quant.quantizable(model)
        group = opts["group_size"]
        if bits == 4 and "group_size" not in {i.split("=", 1)[0].strip() for i in overrides}:
            group = _default_group(model, names)
        try:
            quant.quantize_model(model, bits, group, names)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        before["quantization"] = {"bits": bits, "group_size": group, "modules": names, "scale_dtype": "float16"}
    else:
        model.eval()
        student, cfg, init = make_student(cfg, opts, model)
        record["init"] = init
        teacher = model.requires_grad_(False)

        def kd(logits, y, x):
            with torch.no_grad():
                t_logits = teacher(x)
            return distillation_loss(logits, t_logits, y, opts["temperature"], opts["alpha"])

        record["losses"] = train_steps(student, cfg, opts["steps"], opts["lr"] or cfg.training.lr, batch,
                                       opts["seed"], loss_fn=kd)
        record["teacher"] = {"n_layers": len(teacher.layers), "dim": teacher.cfg.dim}
        model, before = student, {}
    before["history"] = list(before.get("history", [])) + [record]
    before["method"] = method
    if "sparsity" in before:
        before["sparsity"]["measured"] = block_sparsity(model)
    save(out, model, cfg, tokenizer, before)
    log(f"{method}: wrote {out}")
    return before


def _default_group(model: nn.Module, names: list) -> int:
    dims = [getattr(model.get_submodule(n), "in_features", None) or model.get_submodule(n).embedding_dim
            for n in names]
    for g in (64, 32, 16, 8, 4, 2):
        if all(d % g == 0 for d in dims):
            return g
    raise ConfigError(f"group_size: no even group size divides the input dimensions {sorted(set(dims))}")
