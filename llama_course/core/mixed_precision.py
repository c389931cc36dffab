"""Mixed precision: compute in 16 bits, keep fp32 master weights, reduce fp32 gradients, scale fp16 losses.

    training.precision   matmuls (autocast)   weights + optimizer state   p.grad   loss scaling
    fp32                 fp32                 fp32                        fp32     no
    bf16                 bf16                 fp32 (master weights)       fp32     no (bf16 has fp32's exponent range)
    fp16                 fp16                 fp32 (master weights)       fp32     dynamic

`torch.autocast` (on GPUs and on CPUs alike) runs matmuls in 16 bits and keeps reductions (softmax,
norms, the loss) in fp32; the parameters stay fp32, so their gradients arrive in fp32 and the optimizer
updates fp32 master weights. The data-parallel reduction then sums fp32 gradients, as Megatron-LM and
Llama 3 do: `training.grad_reduce_dtype: bf16 | fp16` casts them for the reduction only (half the bytes
on the wire, a coarser sum), the optimizer still reads fp32.

fp16 has 5 exponent bits: gradients below 6e-8 flush to zero, above 65504 overflow. Dynamic loss
scaling (Micikevicius et al. 2018; Megatron's DynamicGradScaler) multiplies the loss by S before
backward, so gradients are S times larger and stay representable, and divides the gradients by S before
the optimizer. When any gradient on ANY rank is inf or NaN (found_inf, reduced over the dp, tp and pp
groups, so every rank of every layout agrees) the step is skipped everywhere and S halves; after
`growth_interval` good steps in a row S doubles again:

    step k:  S g_k overflows on rank 1  ->  every rank skips, S <- S / 2, good <- 0
             finite everywhere          ->  step, good <- good + 1; good = interval: S <- 2 S, good <- 0

Cost: one all-reduce of one float per group and step (fp16 only), and the skipped steps.

    llama-course train configs/tiny.yaml --set training.precision=bf16
    llama-course train configs/tiny.yaml --set training.precision=fp16 --set training.grad_reduce_dtype=fp16
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LossScaler:
    """Dynamic loss scaling: scale the loss, unscale the gradients, back off on overflow, grow when calm."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale, self.growth_factor, self.backoff_factor = init_scale, growth_factor, backoff_factor
        self.growth_interval, self.good_steps = growth_interval, 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, grads: list) -> bool:
        """Divide every gradient by S in place; True when one of them holds an inf or a NaN (this rank)."""
        inv = 1.0 / self.scale
        found = torch.zeros((), dtype=torch.bool, device=grads[0].device) if grads else torch.zeros((), dtype=torch.bool)
        for g in grads:
            g.mul_(inv)
            found |= ~torch.isfinite(g).all()
        return bool(found)

    def update(self, found_inf: bool) -> None:
        """After every step, skipped or not (the same on every rank: found_inf is the world's)."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


class MixedPrecision:
    """training.precision and training.grad_reduce_dtype of one engine."""

    def __init__(self, precision: str, device: torch.device, grad_reduce_dtype: str | None = "fp32"):
        self.precision, self.device = precision, device
        self.dtype = DTYPES[precision] if precision != "fp32" else None
        self.reduce_dtype = DTYPES[grad_reduce_dtype or "fp32"]
        self.scaler = LossScaler() if precision == "fp16" else None

    def autocast(self):
        """Forward (and the loss) in the training precision; fp32 runs as it is."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale_loss(loss) if self.scaler else loss

    def unscale_and_check(self, grads: list, groups: list) -> bool:
        """fp16: unscale, then whether any rank of `groups` (reduced one group after another: dp, tp, pp
        cover the whole grid) found an inf or a NaN. Other precisions: False, nothing to do."""
        if self.scaler is None:
            return False
        found = torch.tensor([float(self.scaler.unscale_(grads))], device=self.device)
        for group in groups:
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(found, op=dist.ReduceOp.MAX, group=group)
        return bool(found.item())

    def update(self, found_inf: bool) -> None:
        if self.scaler:
            self.scaler.update(found_inf)

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
