"""Weight fake quantization with per-channel abs-max scales (symmetric, zero point 0): the
typed Python API and the fake kernel (laid out as torch_ext/csrc/weight_quant.cpp allocates: the
output like the dense or made-contiguous weight, a mask of ceil(numel / 8) bytes, a float32
scale of size(axis)). The autograd (the clipped STE for the weight; none for the scale) is a
C++ kernel, torch_ext/csrc/autograd.cpp."""

from __future__ import annotations

import torch

from ._common import FLOAT32_EPS, LIB, OPS, channel_shape, quant_dequant_outputs

__all__ = ["FLOAT32_EPS", "fake_quantize_weight_abs_max", "fake_quantize_weight_abs_max_with_mask"]


_OP = "fake_quant_weight_abs_max"


def fake_quantize_weight_abs_max_with_mask(
    weight: torch.Tensor,
    axis: int = 0,
    quant_min: int = -127,
    quant_max: int = 127,
    rounding: str = "half_even",
    eps: float = FLOAT32_EPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel symmetric fake quantization of a weight with scales from its own abs-max;
    returns ``(output, mask, scale)``.

    ``scale[c] = max(absmax_c / ((quant_max - quant_min) / 2), eps)`` in float32, the scale
    of ``torch.ao.quantization.PerChannelMinMaxObserver(qscheme=torch.per_channel_symmetric)``,
    for each channel ``c`` along ``axis`` (negative wraps). The range must be symmetric:
    ``quant_min == -quant_max`` (narrow; Paddle's ``channel_wise_abs_max`` with
    ``bin_cnt = quant_max``) or ``quant_min == -quant_max - 1`` (full, PyTorch's qint8).
    ``output`` is ``fake_quantize_per_channel(weight, scale, 0, axis, quant_min, quant_max,
    rounding)``, same dtype (float32, float16, bfloat16) and layout as ``weight``; ``mask`` is
    the clipped-STE mask packed 1 bit per element; ``scale`` is float32 ``[weight.size(axis)]``.
    Differentiable in ``weight`` (gradient ``grad * mask``); ``scale`` is not differentiable.
    A channel holding NaN gets a NaN scale (as ``torch.amax``) and a NaN output, mask 0; an
    empty channel gets ``scale = eps``.
    """
    return OPS.fake_quant_weight_abs_max(weight, axis, quant_min, quant_max, rounding, eps)


def fake_quantize_weight_abs_max(
    weight: torch.Tensor,
    axis: int = 0,
    quant_min: int = -127,
    quant_max: int = 127,
    rounding: str = "half_even",
    eps: float = FLOAT32_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fake_quantize_weight_abs_max_with_mask` without the mask: ``(output, scale)``.

    The values equal ``torch.fake_quantize_per_channel_affine(weight, scale, zeros, axis,
    quant_min, quant_max)`` with ``scale = torch.clamp(weight.float().abs().amax(other dims)
    / ((quant_max - quant_min) / 2), min=eps)``, computed in one pass over the weight where a
    channel fits on chip, and without a host synchronisation on the GPU.
    """
    output, _, scale = fake_quantize_weight_abs_max_with_mask(weight, axis, quant_min, quant_max, rounding, eps)
    return output, scale


@torch.library.register_fake(f"{LIB}::{_OP}")
def _fake_quant_weight_abs_max_fake(weight, axis, quant_min, quant_max, rounding="half_even", eps=FLOAT32_EPS):
    channels = channel_shape(_OP, weight, axis, what="weight")
    output, mask = quant_dequant_outputs(weight)
    return output, mask, weight.new_empty(channels, dtype=torch.float32)
