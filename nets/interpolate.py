"""Bilinear resizing that stays deterministic on CUDA under ``--deterministic``.

CUDA has no deterministic kernel for the backward of bilinear interpolation: it scatters with
atomic adds, and ``torch.use_deterministic_algorithms(True)`` refuses it. Bilinear resizing is
linear and separable, ``out = A_h @ x @ A_w.T`` with two small interpolation matrices, so its
gradient is ``A_h.T @ grad @ A_w``: two matmuls, which cuBLAS runs deterministically. The
forward pass stays ``F.interpolate`` itself, so the model's outputs are bit for bit the same
in either mode; only the gradients' rounding differs (from one nondeterministic order to one
fixed order).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=64)
def interpolation_matrix(
    out_size: int, in_size: int, align_corners: bool, dtype=torch.float32, device=None
) -> torch.Tensor:
    """The (out_size, in_size) matrix of 1-D linear interpolation, as ``F.interpolate``.

    Built on the CPU in float64 (index_put_ with accumulation is deterministic there), then
    moved to ``device``; cached per size, dtype and device, so a training step copies nothing
    to the GPU (a UNet step needs a handful of sizes, the same every step).
    """
    out = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        source = out * scale
    else:
        source = ((out + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    weight = source - low
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, low), 1 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix.to(device=device, dtype=dtype)


class _DeterministicBilinear(torch.autograd.Function):
    """``F.interpolate(bilinear)`` forward; the gradient as two matmuls (see module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int], align_corners: bool):
        ctx.in_size = tuple(x.shape[-2:])
        ctx.size = size
        ctx.align_corners = align_corners
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (in_h, in_w), (out_h, out_w) = ctx.in_size, ctx.size
        work = grad if grad.dtype == torch.float64 else grad.float()  # bf16/fp16 summed in fp32
        device = grad.device
        rows = interpolation_matrix(out_h, in_h, ctx.align_corners, work.dtype, device)
        cols = interpolation_matrix(out_w, in_w, ctx.align_corners, work.dtype, device)
        grad_in = rows.t() @ (work @ cols)
        return grad_in.to(grad.dtype), None, None


def needs_deterministic_backward(x: torch.Tensor) -> bool:
    """Deterministic algorithms are on and ``x`` is a CUDA tensor that will be differentiated."""
    return x.is_cuda and torch.is_grad_enabled() and torch.are_deterministic_algorithms_enabled()


def resize_bilinear(x: torch.Tensor, size, align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) ``x`` to ``size``; deterministic when it must be.

    With deterministic algorithms on, on CUDA and with gradients, the backward pass runs as
    matmuls instead of the atomic-add kernel that ``use_deterministic_algorithms`` refuses.
    """
    size = (int(size[0]), int(size[1]))
    if needs_deterministic_backward(x):
        return _DeterministicBilinear.apply(x, size, align_corners)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class UpsamplingBilinear2d(nn.UpsamplingBilinear2d):
    """``nn.UpsamplingBilinear2d`` (align_corners=True), deterministic under
    ``--deterministic`` on CUDA (see :func:`resize_bilinear`). Otherwise it is the module
    itself, so an ONNX export keeps the scale factor and takes any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not needs_deterministic_backward(x):
            return super().forward(x)
        if self.size is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else self.size
        else:
            size = (int(x.shape[-2] * self.scale_factor), int(x.shape[-1] * self.scale_factor))
        return _DeterministicBilinear.apply(x, size, True)
