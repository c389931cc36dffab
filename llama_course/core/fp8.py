"""FP8 matmuls (`training.fp8`): per-tensor dynamic scaling, e4m3 operands forward, e5m2 gradients backward.

An FP8 number has 8 bits. e4m3 (4 exponent bits, 3 mantissa bits, largest 448) carries weights and
activations; e5m2 (largest 57344, one mantissa bit fewer) carries gradients, which need range more than
precision. A tensor is cast with one scale per tensor, so that its largest magnitude lands on the format's
largest number:

    s = fp8_max / amax(|t|),    q = fp8(t s),    t ~ q / s        (e4m3: relative error <= 2^-4 for normals)

and the product of two cast tensors is (q_a q_b) / (s_a s_b), accumulated in fp32 (the tensor cores'
`torch._scaled_mm` on an H100). Each linear layer of the blocks runs its three matmuls so
(core/weight_grad.py's Function; torchao's "tensorwise" recipe):

    forward   y  = x W^T        x: e4m3   W: e4m3
    backward  dx = dy W         dy: e5m2  W: e4m3
              dW = dy^T x       dy: e5m2  x: e4m3

Norms, attention, softmax, the loss, the output head and the optimizer keep bf16 / fp32. Without FP8 tensor
cores (a CPU, an A100) the product is emulated: the quantized operands multiplied in fp32, the same numbers
as the hardware's up to the order of the fp32 sum, not its speed. `use_fp8` switches the model's linear
layers over (the engine, after the parallel transforms: under tensor parallelism each rank scales its own
shard of a weight).

    llama-course train configs/tiny.yaml --set training.precision=bf16 training.fp8=true
"""

from __future__ import annotations

import torch
from torch import nn

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def quantize(t: torch.Tensor, dtype: torch.dtype) -> tuple:
    """(q, s): t cast to FP8 `dtype` with the per-tensor scale s = fp8_max / amax(|t|) (q / s ~ t)."""
    fmax = torch.finfo(dtype).max
    t = t.detach().float()
    scale = fmax / t.abs().amax().clamp(min=1e-12)
    return (t * scale).clamp(-fmax, fmax).to(dtype), scale


def matmul(a: torch.Tensor, b: torch.Tensor, a_dtype: torch.dtype, b_dtype: torch.dtype,
           out_dtype: torch.dtype) -> torch.Tensor:
    """a @ b (2-D) with both operands cast to FP8, the product in fp32, returned in `out_dtype`."""
    qa, sa = quantize(a, a_dtype)
    qb, sb = quantize(b, b_dtype)
    if _tensor_cores(qa, qb):
        # row-major a, column-major b, scales that dequantize (torch._scaled_mm's contract)
        return torch._scaled_mm(qa.contiguous(), qb.t().contiguous().t(), scale_a=sa.reciprocal(),
                                scale_b=sb.reciprocal(), out_dtype=out_dtype)
    return ((qa.float() @ qb.float()) / (sa * sb)).to(out_dtype)


def _tensor_cores(qa: torch.Tensor, qb: torch.Tensor) -> bool:
    """Whether torch._scaled_mm runs this product: a CUDA GPU of compute capability 8.9+ (Ada, Hopper),
    every dimension a multiple of 16, not both operands e5m2."""
    if not qa.is_cuda or torch.cuda.get_device_capability(qa.device) < (8, 9):
        return False
    if qa.dtype == E5M2 and qb.dtype == E5M2:
        return False
    return all(d % 16 == 0 for d in (*qa.shape, qb.shape[1]))


def use_fp8(model: nn.Module) -> int:
    """training.fp8: switch every linear layer with an `fp8` switch to FP8 matmuls, but the output head (kept
    in the training precision, as TransformerEngine's and torchao's recipes keep it). Returns how many."""
    switched = 0
    for name, module in model.named_modules():
        if hasattr(module, "fp8") and name.split(".")[-1] != "output":
            module.fp8 = True
            switched += 1
    return switched
