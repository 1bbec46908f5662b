"""ConvBN fake quantization: conv2d + BatchNorm2d (+ ReLU) folded for quantization-aware
training, forward fused and backward unfused (docs/convbn.md): the typed Python API and the fake
kernels. The autograd is in C++ (torch_ext/csrc/autograd.cpp): the op saves what
conv_bn_fake_quant_backward needs. The fake kernels mirror torch_ext/csrc/convbn.cpp: activations
are channels_last when the input is (and not also contiguous), NCHW otherwise.
"""

from __future__ import annotations

import warnings

import torch

from ._common import FLOAT32_EPS, LIB, OPS, check_devices, check_output_mask, mask_bytes

__all__ = ["conv_bn_fake_quant", "conv_bn_fake_quant_with_fold_scale", "fold_weight"]


_OP = "conv_bn_fake_quant"

#: Row of the op's [6, C] channel_state holding the fold scale s (include/fakequant/convbn.h kRowScale).
FOLD_SCALE_ROW = 3


def _fold_mode(fold_mode: str, mode: str | None) -> str:
    """``fold_mode``, or the value of its former name ``mode`` (with a FutureWarning); both at
    once only if they agree."""
    if mode is None:
        return fold_mode
    warnings.warn("conv_bn_fake_quant: mode= is now fold_mode= (the name the schema and the QAT modules use); "
                  "mode= will be removed", FutureWarning, stacklevel=3)
    if fold_mode not in ("batch", mode):
        raise TypeError(f"conv_bn_fake_quant: got fold_mode={fold_mode!r} and mode={mode!r}; pass fold_mode only")
    return mode


def _pair(v) -> list[int]:
    """A conv argument as the schema's int[2]: an int, or a sequence of 1 or 2 ints."""
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    return [v[0], v[0]] if len(v) == 1 else [v[0], v[1]]


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
    fold_mode: str = "batch",
    training: bool = True,
    relu: bool = False,
    quantize_weight: bool = True,
    quant_min: int = -128,
    quant_max: int = 127,
    rounding: str = "half_even",
    weight_eps: float = FLOAT32_EPS,
    mode: str | None = None,
) -> torch.Tensor:
    """Conv2d + BatchNorm2d (+ ReLU) with the BN scale folded into a per-output-channel
    fake-quantised weight.

    ``Q`` is ``fake_quantize_weight_abs_max(w_fold, 0, quant_min, quant_max, rounding,
    weight_eps)`` (``-128/127``: PyTorch's per_channel_symmetric qint8; ``-127/127``: Paddle's
    channel_wise_abs_max), or the identity with ``quantize_weight=False``. With
    ``s = bn_weight / sqrt(var + eps)``:

    * ``training=True, fold_mode="batch"`` (linger / Jacob et al.): value
      ``conv(x, Q(W s_B)) + beta - s_B mu_B`` with the batch statistics of ``conv(x, W)``;
      gradient of the unfused ``BN_train(conv(x, W) + bias)`` with Q's mask on the weight
      gradient.
    * ``training=True, fold_mode="running"`` (torch.ao ``ConvBn2d._forward_approximate``):
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

    ``mode`` is the former name of ``fold_mode`` (the schema's and the QAT modules' name): still
    accepted, with a ``FutureWarning``.
    """
    return conv_bn_fake_quant_with_fold_scale(
        input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride=stride, padding=padding,
        dilation=dilation, groups=groups, eps=eps, momentum=momentum, fold_mode=fold_mode, training=training, relu=relu,
        quantize_weight=quantize_weight, quant_min=quant_min, quant_max=quant_max, rounding=rounding,
        weight_eps=weight_eps, mode=mode)[0]


def conv_bn_fake_quant_with_fold_scale(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                                       stride=1, padding=0, dilation=1, groups=1, eps=1e-5, momentum=0.1,
                                       fold_mode="batch", training=True, relu=False, quantize_weight=True,
                                       quant_min=-128, quant_max=127, rounding="half_even", weight_eps=FLOAT32_EPS,
                                       mode=None):
    """:func:`conv_bn_fake_quant` that also returns the fold scale: ``(output, s)``, ``s`` float64
    ``[C_out]`` (not differentiable), the per-channel factor the weight was folded with
    (``Q(W * s)``; batch statistics in batch-mode training, running statistics otherwise;
    ``s = 1`` where running-mode training holds it constant). :func:`fold_weight` of
    ``weight`` and ``s`` is the fold ``Q`` quantised."""
    fold_mode = _fold_mode(fold_mode, mode)
    if input.is_floating_point() and input.dtype == torch.float32 and torch.is_autocast_enabled(input.device.type):
        input = input.to(torch.get_autocast_dtype(input.device.type))
    output, *_, state = OPS.conv_bn_fake_quant(
        input, weight, bias, bn_weight, bn_bias, running_mean, running_var, _pair(stride), _pair(padding),
        _pair(dilation), groups, eps, momentum, fold_mode, training, relu, quantize_weight, quant_min, quant_max,
        rounding, weight_eps)
    # A copy: the channel state is saved for the backward, which a caller's in-place edit would spoil.
    return output, state[FOLD_SCALE_ROW].clone()


def fold_weight(weight: torch.Tensor, fold_scale: torch.Tensor) -> torch.Tensor:
    """The float32 fold the op quantises, ``W * s`` per output channel, with the op's arithmetic
    (docs/convbn.md): one float32 product with ``s`` rounded to float32 for float32 / 16-bit
    weights; the product in float64, rounded to float32, for float64 weights."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    if weight.dtype == torch.float64:
        return (weight * fold_scale.to(torch.float64).reshape(shape)).to(torch.float32)
    return weight.to(torch.float32) * fold_scale.to(torch.float32).reshape(shape)


# ---------------------------------------------------------------------------------------
# Fake kernels


def _activation_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _conv_output_shape(input, weight, stride, padding, dilation) -> list[int]:
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    spatial = []
    for d in range(2):
        size = input.shape[2 + d] + 2 * padding[d] - dilation[d] * (weight.shape[2 + d] - 1) - 1
        spatial.append(size // stride[d] + 1)
    return [input.shape[0], weight.shape[0], *spatial]


@torch.library.register_fake(f"{LIB}::{_OP}")
def _conv_bn_fake_quant_fake(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride=(1,),
                             padding=(0,), dilation=(1,), groups=1, eps=1e-5, momentum=0.1, fold_mode="batch",
                             training=True, relu=False, quantize_weight=True, quant_min=-128, quant_max=127,
                             rounding="half_even", weight_eps=FLOAT32_EPS):
    op = f"fakequant.{_OP}"
    torch._check(input.dim() == 4, lambda: f"{op}: input must be a 4-d NCHW tensor, got {input.dim()} dimensions")
    torch._check(weight.dim() == 4, lambda: f"{op}: weight must be a 4-d [out_channels, in_channels/groups, kh, kw] "
                 f"tensor, got {weight.dim()} dimensions")
    torch._check(fold_mode in ("batch", "running"),
                 lambda: f"{op}: fold_mode must be 'batch' or 'running', got '{fold_mode}'")
    check_devices(_OP, "input", input, weight=weight, bn_weight=bn_weight, bn_bias=bn_bias,
                  running_mean=running_mean, running_var=running_var)
    fmt = _activation_format(input)
    shape = _conv_output_shape(input, weight, stride, padding, dilation)
    output = input.new_empty(shape).contiguous(memory_format=fmt)
    pre_bn = torch.empty_like(output) if training else input.new_empty((0,))
    weight_q = input.new_empty(weight.shape)
    weight_mask = input.new_empty((mask_bytes(weight.numel()) if quantize_weight else 0,), dtype=torch.uint8)
    relu_mask = input.new_empty((mask_bytes(output.numel()) if relu else 0,), dtype=torch.uint8)
    channel_state = input.new_empty((6, weight.shape[0]), dtype=torch.float64)
    return output, pre_bn, weight_q, weight_mask, relu_mask, channel_state


@torch.library.register_fake(f"{LIB}::{_OP}_backward")
def _conv_bn_fake_quant_backward_fake(grad_output, input, weight, pre_bn, weight_q, weight_mask, relu_mask,
                                      channel_state, stride, padding, dilation, groups, fold_mode, training,
                                      output_mask):
    check_output_mask(f"{_OP}_backward", output_mask, "grad_input, grad_weight, grad_params")
    check_devices(f"{_OP}_backward", "input", input, grad_output=grad_output, weight=weight, pre_bn=pre_bn,
                  weight_q=weight_q, weight_mask=weight_mask, relu_mask=relu_mask, channel_state=channel_state)
    fmt = _activation_format(input)
    grad_input = (torch.empty_like(input, memory_format=fmt) if output_mask[0] else input.new_empty((0,)))
    grad_weight = (weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty((0,)))
    grad_params = (input.new_empty((3, weight.shape[0]), dtype=torch.float64) if output_mask[2]
                   else input.new_empty((0,), dtype=torch.float64))
    return grad_input, grad_weight, grad_params

