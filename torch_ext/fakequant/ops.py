"""Typed Python API over torch.ops.fakequant.*."""

from __future__ import annotations

import torch

#: Rounding modes accepted by the quant-dequant ops.
ROUNDINGS = ("half_even", "half_away")


def fake_quantize_per_tensor_with_mask(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor affine quant-dequant; returns ``(output, mask)``.

    ``scale`` is a 1-element float32 tensor and ``zero_point`` a 1-element int32 tensor on
    ``input``'s device. ``output`` has ``input``'s dtype (float32, float16 or bfloat16) and
    layout; ``mask`` is the clipped-STE mask packed 1 bit per element (uint8,
    ``ceil(numel / 8)`` bytes, bit ``i % 8`` of byte ``i // 8`` in the output's memory
    order). Differentiable in ``input`` (gradient ``grad * mask``).
    """
    return torch.ops.fakequant.fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding)


def fake_quantize_per_tensor(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
) -> torch.Tensor:
    """Per-tensor affine quant-dequant, a drop-in for
    ``torch.fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max)``
    with the same values on finite inputs (NaN stays NaN here), ``rounding`` in
    :data:`ROUNDINGS`, and a 1-bit-per-element saved mask instead of a bool tensor."""
    return fake_quantize_per_tensor_with_mask(input, scale, zero_point, quant_min, quant_max, rounding)[0]


def fake_quantize_per_channel_with_mask(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel affine quant-dequant along ``axis`` (negative wraps); returns
    ``(output, mask)`` as :func:`fake_quantize_per_tensor_with_mask` does.

    ``scale`` is float32 ``[C]`` and ``zero_point`` int32 ``[C]`` (added after rounding) or
    float32 ``[C]`` (added before rounding, ATen's float-zero-point rule), with
    ``C = input.size(axis)``, on ``input``'s device.
    """
    return torch.ops.fakequant.fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding)


def fake_quantize_per_channel(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
) -> torch.Tensor:
    """Per-channel affine quant-dequant, a drop-in for
    ``torch.fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max)``
    (same values on finite inputs; NaN stays NaN) with a 1-bit-per-element saved mask and no
    host synchronisation on the GPU."""
    return fake_quantize_per_channel_with_mask(input, scale, zero_point, axis, quant_min, quant_max, rounding)[0]


def masked_grad(grad_output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Clipped straight-through backward: ``grad_output`` where the packed ``mask`` bit is
    set, else 0. ``grad_output`` must be laid out like the forward output."""
    return torch.ops.fakequant.fake_quant_mask_backward(grad_output, mask)
