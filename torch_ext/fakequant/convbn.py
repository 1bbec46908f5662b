"""ConvBN fake quantization: conv2d + BatchNorm2d (+ ReLU) folded for quantization-aware
training, forward fused and backward unfused (docs/convbn.md)."""

from __future__ import annotations

import torch

from ._convbn import ConvBnFakeQuant
from .weight_quant import FLOAT32_EPS

MODES = ("batch", "running")


def _pair(v) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    return [v[0], v[0]] if len(v) == 1 else v


def conv_bn_fake_quant(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor,
    bn_bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    eps: float = 1e-5,
    momentum: float = 0.1,
    mode: str = "batch",
    training: bool = True,
    relu: bool = False,
    quantize_weight: bool = True,
    quant_min: int = -128,
    quant_max: int = 127,
    rounding: str = "half_even",
    weight_eps: float = FLOAT32_EPS,
) -> torch.Tensor:
    """Conv2d + BatchNorm2d (+ ReLU) with the BN scale folded into a per-output-channel
    fake-quantised weight.

    ``Q`` is ``fake_quantize_weight_abs_max(w_fold, 0, quant_min, quant_max, rounding,
    weight_eps)`` (``-128/127``: PyTorch's per_channel_symmetric qint8; ``-127/127``: Paddle's
    channel_wise_abs_max), or the identity with ``quantize_weight=False``. With
    ``s = bn_weight / sqrt(var + eps)``:

    * ``training=True, mode="batch"`` (linger / Jacob et al.): value
      ``conv(x, Q(W s_B)) + beta - s_B mu_B`` with the batch statistics of ``conv(x, W)``;
      gradient of the unfused ``BN_train(conv(x, W) + bias)`` with Q's mask on the weight
      gradient.
    * ``training=True, mode="running"`` (torch.ao ``ConvBn2d._forward_approximate``):
      ``BN_train(conv(x, Q(W s_run)) / s_run + bias)``, gradient by autograd of that
      expression. Channels with ``bn_weight == 0`` fold with ``s = 1`` (output ``bn_bias``,
      no NaN; PyTorch's module gives NaN there).
    * ``training=False`` (eval, or frozen BN): ``conv(x, Q(W s_run)) + beta + s_run (bias -
      running_mean)``, one convolution, differentiable; the running statistics are untouched.

    In training, ``running_mean`` / ``running_var`` (float32 ``[C_out]``) are updated in place
    exactly like ``nn.BatchNorm2d``'s (``momentum`` is the averaging factor; unbiased
    variance). ``input`` is NCHW (contiguous or channels_last; the output follows); float32,
    float16, bfloat16 (statistics and fold in float32/float64, output in input's dtype) or
    float64. Under autocast a float32 input is cast to the autocast dtype. Gradients flow to
    input, weight, bias, bn_weight and bn_bias.
    """
    return conv_bn_fake_quant_with_fold_scale(
        input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride=stride, padding=padding,
        dilation=dilation, groups=groups, eps=eps, momentum=momentum, mode=mode, training=training, relu=relu,
        quantize_weight=quantize_weight, quant_min=quant_min, quant_max=quant_max, rounding=rounding,
        weight_eps=weight_eps)[0]


def conv_bn_fake_quant_with_fold_scale(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                                       stride=1, padding=0, dilation=1, groups=1, eps=1e-5, momentum=0.1,
                                       mode="batch", training=True, relu=False, quantize_weight=True, quant_min=-128,
                                       quant_max=127, rounding="half_even", weight_eps=FLOAT32_EPS):
    """:func:`conv_bn_fake_quant` that also returns the fold scale: ``(output, s)``, ``s`` float64
    ``[C_out]`` (not differentiable), the per-channel factor the weight was folded with
    (``Q(W * s)``; batch statistics in batch-mode training, running statistics otherwise;
    ``s = 1`` where running-mode training holds it constant). :func:`fold_weight` of
    ``weight`` and ``s`` is the fold ``Q`` quantised."""
    if input.is_floating_point() and input.dtype == torch.float32 and torch.is_autocast_enabled(input.device.type):
        input = input.to(torch.get_autocast_dtype(input.device.type))
    return ConvBnFakeQuant.apply(
        input, weight, bias, bn_weight, bn_bias, running_mean, running_var, _pair(stride), _pair(padding),
        _pair(dilation), groups, eps, momentum, mode, training, relu, quantize_weight, quant_min, quant_max,
        rounding, weight_eps)


def fold_weight(weight: torch.Tensor, fold_scale: torch.Tensor) -> torch.Tensor:
    """The float32 fold the op quantises, ``W * s`` per output channel, with the op's arithmetic
    (docs/convbn.md): one float32 product with ``s`` rounded to float32 for float32 / 16-bit
    weights; the product in float64, rounded to float32, for float64 weights."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    if weight.dtype == torch.float64:
        return (weight * fold_scale.to(torch.float64).reshape(shape)).to(torch.float32)
    return weight.to(torch.float32) * fold_scale.to(torch.float32).reshape(shape)
