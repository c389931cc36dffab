"""Weight-only quantization (part of concept 12, model_compression): int8 per output channel, int4 per group.

A weight matrix W (out x in) is stored as small integers q and a few floating-point scales s:

    int8, per output channel:  s_o = max_i |W_oi| / 127,  q_oi = round(W_oi / s_o) in [-127, 127]   (1 byte)
    int4, per group of g inputs: s_og = max_{i in group} |W_oi| / 7, q_oi = round(W_oi / s_og) in [-7, 7],
                               stored as q + 8 in one nibble, two weights per byte                  (1/2 byte)
    dequantized:               W~_oi = q_oi s   with |W_oi - W~_oi| <= s / 2  (round to nearest)

Scales are fp16 (2 bytes): int8 costs 1 + 2/in bytes per weight, int4 costs 1/2 + 2/g. Against fp32 storage
that is about 0.25x and 0.14x the bytes; against bf16 0.5x and 0.28x. The forward pass dequantizes on the
fly (`QuantLinear`: W~ = q s, then an ordinary matmul), so this saves memory and memory bandwidth, not
FLOPs: the matmul still runs in floating point. Fast low-bit inference needs int8/fp8 matmul kernels or
fused dequantize-in-the-kernel (as GPTQ/AWQ/Marlin kernels do); this module shows the format, not the kernel.

Symmetric round-to-nearest is the simplest post-training quantization (RTN). Better methods choose q
to minimise the layer's output error rather than the weight error: GPTQ (second-order, column by column),
AWQ (scale up the input channels that carry large activations). The embedding table is quantized per row
(one scale per token vector) and dequantizes only the rows a batch looks up.

    llama-course compress runs/demo/checkpoints --method int4 --out runs/int4 --set group_size=32
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QMAX = {8: 127, 4: 7}


def quantize(w: torch.Tensor, bits: int, group_size: int | None = None) -> tuple:
    """(q, scale) of a 2-D weight: q int8 in [-QMAX, QMAX] of w's shape, scale fp16 (out, groups).

    group_size None = one group per row (per output channel); otherwise it must divide w.shape[1].
    """
    out_f, in_f = w.shape
    g = group_size or in_f
    if in_f % g:
        raise ValueError(f"group size {g} does not divide the input dimension {in_f}")
    qmax = QMAX[bits]
    groups = w.detach().float().reshape(out_f, in_f // g, g)
    amax = groups.abs().amax(-1)
    exact = (amax / qmax).clamp(min=2.0 ** -24)                        # an all-zero group keeps a non-zero scale
    scale = exact.to(torch.float16)
    low = scale.float() < exact                                        # rounded down: the largest |w| would clip
    scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    q = torch.round(groups / scale.float().unsqueeze(-1)).clamp(-qmax, qmax).to(torch.int8)
    return q.reshape(out_f, in_f), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """W~ = q x scale, each scale applied to its group of q.shape[1] / scale.shape[1] consecutive inputs."""
    out_f, in_f = q.shape
    groups = scale.shape[1]
    w = q.reshape(out_f, groups, in_f // groups).to(dtype) * scale.to(dtype).unsqueeze(-1)
    return w.reshape(out_f, in_f)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values in [-8, 7] per uint8: q[:, 2j] in the low nibble, q[:, 2j+1] in the high one."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {q.shape[-1]}")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: int8 values of shape (..., 2 x packed.shape[-1])."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


class QuantizedWeight(nn.Module):
    """The stored form of one matrix: `qweight` (int8, or uint8 with two int4 per byte) and fp16 `scale`.

    They are buffers, not parameters: the optimizer never sees them (fine-tuning a quantized model needs
    quantization-aware training or adapters such as QLoRA; `train --set training.init_from=...` dequantizes).
    """

    def __init__(self, out_features: int, in_features: int, bits: int, group_size: int | None):
        super().__init__()
        if bits not in QMAX:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        self.out_features, self.in_features, self.bits = out_features, in_features, bits
        self.group_size = group_size or in_features
        n_groups = in_features // self.group_size
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        else:
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=torch.float16))

    def set_from(self, w: torch.Tensor) -> None:
        q, scale = quantize(w, self.bits, self.group_size)
        self.qweight.copy_(q if self.bits == 8 else pack_int4(q))
        self.scale.copy_(scale)

    def int_values(self, rows=None) -> torch.Tensor:
        q = self.qweight if rows is None else self.qweight[rows]
        return q if self.bits == 8 else unpack_int4(q)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized matrix in fp32 (what code that reads `.weight` of a Linear or Embedding sees)."""
        return self.dequantized()

    def dequantized(self, rows=None, dtype=torch.float32) -> torch.Tensor:
        """The dequantized matrix (or only `rows` of it)."""
        q = self.int_values(rows)
        scale = self.scale if rows is None else self.scale[rows]
        if q.dim() == 1:
            return dequantize(q[None], scale[None], dtype)[0]
        return dequantize(q.reshape(-1, q.shape[-1]), scale.reshape(-1, scale.shape[-1]), dtype).reshape(q.shape)


class QuantLinear(QuantizedWeight):
    """y = x W~^T + b with W~ dequantized from int8/int4 on every call (weight-only quantization)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = None,
                 bias: bool = False):
        super().__init__(out_features, in_features, bits, group_size)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> QuantLinear:
        m = cls(linear.in_features, linear.out_features, bits, group_size, bias=linear.bias is not None)
        m.set_from(linear.weight)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(dtype=x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group_size={self.group_size}"


class QuantEmbedding(QuantizedWeight):
    """Embedding lookup that dequantizes only the looked-up rows (one scale per row or per group)."""

    def __init__(self, num_embeddings: int, dim: int, bits: int, group_size: int | None = None):
        super().__init__(num_embeddings, dim, bits, group_size)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int, group_size: int | None = None) -> QuantEmbedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, bits, group_size)
        m.set_from(emb.weight)
        return m

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dequantized(rows=tokens)


def quantizable(model: nn.Module) -> list:
    """Names of the matrices weight-only quantization replaces: every nn.Linear and the token embedding
    (with tied embeddings the shared matrix is left in floating point, quantized neither as input nor output)."""
    tied = getattr(model.cfg, "tie_embeddings", False)
    names = []
    for name, module in model.named_modules():
        if tied and name in ("tok_embeddings", "output"):
            continue
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Embedding) and name == "tok_embeddings"):
            names.append(name)
    return names


def check_group_size(model: nn.Module, names: list, bits: int, group_size: int | None) -> None:
    """Raise ValueError (one line) when int4 packing or the group size does not fit a matrix."""
    for name in names:
        module = model.get_submodule(name)
        in_f = module.in_features if isinstance(module, nn.Linear) else module.embedding_dim
        if group_size is not None and in_f % group_size:
            raise ValueError(f"group_size: {group_size} does not divide the input dimension {in_f} of {name}")
        if bits == 4 and (group_size or in_f) % 2:
            raise ValueError(f"group_size: int4 packs two values per byte, so groups must be even "
                             f"(got {group_size or in_f} for {name})")


def quantize_model(model: nn.Module, bits: int, group_size: int | None = None, names: list | None = None) -> list:
    """Replace the matrices `names` (default: `quantizable(model)`) by QuantLinear / QuantEmbedding in place."""
    names = quantizable(model) if names is None else names
    check_group_size(model, names, bits, group_size)
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            new = QuantLinear.from_linear(module, bits, group_size)
        else:
            new = QuantEmbedding.from_embedding(module, bits, group_size)
        _set_submodule(model, name, new)
    return names


def empty_quantized(model: nn.Module, bits: int, group_size: int | None, names: list) -> None:
    """Swap in QuantLinear / QuantEmbedding shells of the right shapes, to load a quantized state dict."""
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            new = QuantLinear(module.in_features, module.out_features, bits, group_size, bias=module.bias is not None)
        else:
            new = QuantEmbedding(module.num_embeddings, module.embedding_dim, bits, group_size)
        _set_submodule(model, name, new)


def dequantize_model(model: nn.Module) -> None:
    """Replace every quantized matrix by an ordinary float nn.Linear / nn.Embedding holding W~ (for fine-tuning)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            new.weight.data.copy_(module.dequantized())
            if module.bias is not None:
                new.bias.data.copy_(module.bias.data)
            _set_submodule(model, name, new)
        elif isinstance(module, QuantEmbedding):
            new = nn.Embedding(module.out_features, module.in_features)
            new.weight.data.copy_(module.dequantized())
            _set_submodule(model, name, new)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
