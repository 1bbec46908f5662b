"""Typed Python API of the learnable-qparam (LSQ / LSQ+) ops."""

from __future__ import annotations

import torch


def fake_quantize_learnable_per_tensor(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Per-tensor fake quantization with a learnable scale (LSQ) and zero point (LSQ+), a
    drop-in for ``torch._fake_quantize_learnable_per_tensor_affine``.

    ``scale`` and ``zero_point`` are 1-element float32 tensors on ``input``'s device; either
    may require grad. The forward rounds the zero point to the nearest integer (ties to
    even), clamps it into ``[quant_min, quant_max]`` and quant-dequantises ``input``
    (float32, float16 or bfloat16; the output has its dtype and layout). The backward gives
    ``input`` the clipped straight-through gradient and ``scale`` / ``zero_point`` PyTorch's
    LSQ gradients summed over the tensor and multiplied by ``grad_factor`` (LSQ suggests
    ``1 / sqrt(numel * quant_max)``). Values equal ATen's on finite inputs (NaN stays NaN);
    only the input, scale and zero point are saved for backward, nothing is synchronised
    with the host on CUDA. Bad qparam values raise on the CPU and give NaN on CUDA.
    """
    return torch.ops.fakequant.fake_quant_learnable_per_tensor(input, scale, zero_point, quant_min, quant_max,
                                                               grad_factor)


def fake_quantize_learnable_per_channel(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Per-channel fake quantization along ``axis`` (negative wraps) with learnable scales and
    zero points, a drop-in for ``torch._fake_quantize_learnable_per_channel_affine``.

    ``scale`` and ``zero_point`` are float32 ``[C]`` tensors with ``C = input.size(axis)``,
    on ``input``'s device. Any dense layout (channels_last included) is processed in place.
    ``grad_scale`` / ``grad_zero_point`` are summed per channel; otherwise as
    :func:`fake_quantize_learnable_per_tensor`.
    """
    return torch.ops.fakequant.fake_quant_learnable_per_channel(input, scale, zero_point, axis, quant_min,
                                                                quant_max, grad_factor)
