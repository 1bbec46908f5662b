"""Fake quantization with scales from the tensor's own abs-max (symmetric, zero point 0), per
channel (weights, PyTorch's per_channel_symmetric) or per group of the last dim (torchao's
per-group int): the typed Python API and the fake kernels (laid out as
torch_ext/csrc/weight_quant.cpp allocates: the output like the dense or made-contiguous input,
a mask of ceil(numel / 8) bytes, float32 scales). The autograd (the clipped STE for the input;
none for the scales) is C++, torch_ext/csrc/autograd.cpp."""

from __future__ import annotations

import torch

from ._common import FLOAT32_EPS, LIB, OPS, channel_shape, mask_like, quant_dequant_outputs

__all__ = ["FLOAT32_EPS", "fake_quantize_per_group", "fake_quantize_weight_abs_max",
           "fake_quantize_weight_abs_max_with_mask"]


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


def fake_quantize_per_group(
    input: torch.Tensor, group_size: int, quant_min: int = -8, quant_max: int = 7, rounding: str = "half_even",
    eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group symmetric fake quantization, bit for bit torchao's
    ``IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int<b>, group_size=group_size))`` (and its
    ``get_group_qparams_symmetric`` scales); returns ``(output, scale)``.

    Groups are ``group_size`` consecutive elements along the last dim (a divisor of it). For
    each group, ``scale = max(T(absmax / ((quant_max - quant_min) / 2)), eps)``: the quotient is
    rounded to the input's dtype ``T`` as torchao's tensor ops round it, then float32; ``eps``
    defaults to ``torch.finfo(T).smallest_normal``. The range must be symmetric
    (``quant_min == -quant_max - 1``, torchao's ``-2^(b-1) .. 2^(b-1) - 1``, or
    ``quant_min == -quant_max``). ``output = T(clamp(round(x * (1 / scale)), quant_min,
    quant_max) * scale)`` (contiguous, input's dtype), computed with its scales in one pass;
    ``scale`` is float32 ``[..., size(-1) / group_size]``, not differentiable. Differentiable in
    ``input`` (the clipped STE on a 1-bit mask). A group holding NaN gets a NaN scale and
    output.
    """
    output, _, scale = OPS.fake_quant_per_group(input, group_size, quant_min, quant_max, rounding, eps)
    return output, scale


@torch.library.register_fake(f"{LIB}::fake_quant_per_group")
def _fake_quant_per_group_fake(input, group_size, quant_min=-8, quant_max=7, rounding="half_even", eps=None):
    op = "fakequant.fake_quant_per_group"
    torch._check(input.dim() >= 1, lambda: f"{op}: input must have at least 1 dimension (groups run along the "
                 "last), got a 0-d tensor")
    row = input.shape[-1]
    torch._check(group_size >= 1 and row % group_size == 0, lambda: f"{op}: group_size must be a positive divisor "
                 f"of the last dimension ({row}), got {group_size}")
    x = input.contiguous()
    return torch.empty_like(x), mask_like(x), input.new_empty((*input.shape[:-1], row // group_size),
                                                               dtype=torch.float32)
