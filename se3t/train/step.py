"""One training step in the config's words: ``train.precision`` picks the arithmetic.

Training (:mod:`se3t.train.loop`), ``se3t profile`` and ``benchmarks/train_step.py`` all run
their steps through these pieces, so a figure measures the step that training runs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from se3t.choices import Precision

__all__ = ["TrainingStep", "autocast", "grad_scaler", "set_matmul_precision"]

_AUTOCAST = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def autocast(precision: Precision | str, device: torch.device):
    """The forward pass's context: autocast to fp16 or bf16, or nothing (fp32, tf32)."""
    dtype = _AUTOCAST.get(Precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: Precision | str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, on for fp16 only (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=Precision(precision) is Precision.FP16)


def set_matmul_precision(precision: Precision | str) -> None:
    """TF32 matrix products on CUDA for ``tf32``, full fp32 otherwise (process-wide flags)."""
    tf32 = Precision(precision) is Precision.TF32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


class TrainingStep:
    """Forward, L1 loss against ``batch.y``, backward and optimizer step, as one call.

    ``loss_of(model_output, batch)`` may replace the plain L1 loss (training standardizes the
    targets first). The returned loss is detached; reading it (``.item()``) waits for the
    device, so a caller that times steps reads it only after the clock stops.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: Precision | str,
        device: torch.device,
    ) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.precision = Precision(precision)
        self.scaler = grad_scaler(self.precision, device)

    def __call__(self, batch, basis: Tensor | None = None) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision, self.device):
            out = self.model(batch, basis=basis)  # [B, T]
            loss = nn.functional.l1_loss(out.float(), batch.y.float())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
