"""Distillation (part of concept 12, model_compression): a smaller student learns the teacher's outputs.

    loss = alpha T^2 KL(softmax(z_T / T) || softmax(z_S / T)) + (1 - alpha) CE(y, z_S)

The soft targets carry what the teacher knows about every wrong token (which continuations are nearly
right), information a one-hot label lacks. Dividing logits by T > 1 flattens both distributions so that
this shows; the gradient of the soft term scales as 1/T^2, hence the T^2 (Hinton et al. 2015). Cost per
step: one teacher forward (no backward) on top of the student's training step.

    llama-course compress CKPT --method distill --out runs/student --set student_layers=2 --set steps=300
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llama_course.core.model import build_model
from simulator.config import ConfigError, load_config


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha T^2 KL(p_T || p_S) at temperature T + (1 - alpha) CE(targets, student), means over tokens."""
    t = temperature
    s_logp = F.log_softmax(student_logits.float().flatten(0, -2) / t, dim=-1)
    t_logp = F.log_softmax(teacher_logits.float().flatten(0, -2) / t, dim=-1)
    kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(student_logits.float().flatten(0, -2), targets.flatten())
    return alpha * t * t * kl + (1 - alpha) * ce


def make_student(teacher_cfg, opts: dict, teacher: nn.Module | None = None):
    """(student model, student Config): teacher's config with a shallower and/or narrower model."""
    tm = teacher_cfg.model
    raw = teacher_cfg.to_dict()
    layers = opts["student_layers"] or max(1, tm.n_layers // 2)
    dim = opts["student_dim"] or tm.dim
    ffn = opts["student_ffn_dim"] or max(1, round(tm.ffn_dim * dim / tm.dim))
    raw["model"].update(n_layers=layers, dim=dim, ffn_dim=ffn)
    raw["parallel"].update(dp=1, tp=1, pp=1, vpp=1)          # the student's config: one process, as it trained
    raw["cluster"]["num_gpus"] = None
    try:
        cfg = load_config(raw)
    except ConfigError as e:
        raise ConfigError(f"student: {e}") from None
    torch.manual_seed(opts["seed"])
    student = build_model(cfg, seed=opts["seed"])
    init = opts["init"]
    dense = teacher is not None and not getattr(teacher, "compression", None) and all(
        (b.attention.n_heads, b.attention.n_kv_heads, b.feed_forward.w1.out_features)
        == (tm.n_heads, tm.n_kv_heads, tm.ffn_dim) for b in teacher.layers)
    can_copy = dense and (dim, ffn) == (tm.dim, tm.ffn_dim)
    if init == "teacher" and not can_copy:
        raise ConfigError("init: `teacher` needs the teacher's dim and ffn_dim and a teacher that is not pruned "
                          "or quantized")
    if init == "teacher" or (init == "auto" and can_copy):
        _copy_from_teacher(student, teacher, layers)
        init = "teacher"
    else:
        init = "random"
    return student, cfg, init


def _copy_from_teacher(student: nn.Module, teacher: nn.Module, layers: int) -> None:
    """Embeddings, final norm, head and evenly spaced blocks (as DistilBERT takes every other layer)."""
    n = len(teacher.layers)
    picks = [round(i * (n - 1) / max(1, layers - 1)) for i in range(layers)] if layers > 1 else [n - 1]
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    for i, j in enumerate(picks):
        state.update({f"layers.{i}.{k}": v for k, v in teacher.layers[j].state_dict().items()})
    student.load_state_dict(state)
