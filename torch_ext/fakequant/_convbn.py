"""Fake (meta) kernels and autograd of fakequant.conv_bn_fake_quant.

The op updates the BN running statistics in place, so torch.library.register_autograd (which
needs functional ops) cannot take it: as for the fused observers, an autograd.Function runs the
forward op, saves what the backward op needs, and calls conv_bn_fake_quant_backward.

The fake kernels mirror torch_ext/csrc/convbn.cpp: activations are channels_last when the
input is (and not also contiguous), NCHW otherwise.
"""

from __future__ import annotations

import torch

from ._registrations import _lib

_OP = "conv_bn_fake_quant"


def _activation_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pair(v) -> list[int]:
    return [v[0], v[0]] if len(v) == 1 else [v[0], v[1]]


def _conv_output_shape(input, weight, stride, padding, dilation) -> list[int]:
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    spatial = []
    for d in range(2):
        size = input.shape[2 + d] + 2 * padding[d] - dilation[d] * (weight.shape[2 + d] - 1) - 1
        spatial.append(size // stride[d] + 1)
    return [input.shape[0], weight.shape[0], *spatial]


def _mask_bytes(n) -> int:
    return (n + 7) // 8


@torch.library.register_fake(f"{_lib}::{_OP}")
def _conv_bn_fake_quant_fake(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride=(1,),
                             padding=(0,), dilation=(1,), groups=1, eps=1e-5, momentum=0.1, fold_mode="batch",
                             training=True, relu=False, quantize_weight=True, quant_min=-128, quant_max=127,
                             rounding="half_even", weight_eps=1.1920928955078125e-07):
    op = f"fakequant.{_OP}"
    torch._check(input.dim() == 4, lambda: f"{op}: input must be a 4-d NCHW tensor, got {input.dim()} dimensions")
    torch._check(weight.dim() == 4, lambda: f"{op}: weight must be a 4-d [out_channels, in_channels/groups, kh, kw] "
                 f"tensor, got {weight.dim()} dimensions")
    torch._check(fold_mode in ("batch", "running"), lambda: f"{op}: mode must be 'batch' or 'running', got '{fold_mode}'")
    for name, t in (("weight", weight), ("bn_weight", bn_weight), ("bn_bias", bn_bias),
                    ("running_mean", running_mean), ("running_var", running_var)):
        torch._check(t.device == input.device, lambda name=name, t=t: f"{op}: {name} must be on the same device as "
                     f"input ({input.device}), got {t.device}")
    fmt = _activation_format(input)
    shape = _conv_output_shape(input, weight, stride, padding, dilation)
    output = input.new_empty(shape).contiguous(memory_format=fmt)
    pre_bn = torch.empty_like(output) if training else input.new_empty((0,))
    weight_q = input.new_empty(weight.shape)
    weight_mask = input.new_empty((_mask_bytes(weight.numel()) if quantize_weight else 0,), dtype=torch.uint8)
    relu_mask = input.new_empty((_mask_bytes(output.numel()) if relu else 0,), dtype=torch.uint8)
    channel_state = input.new_empty((6, weight.shape[0]), dtype=torch.float64)
    return output, pre_bn, weight_q, weight_mask, relu_mask, channel_state


@torch.library.register_fake(f"{_lib}::{_OP}_backward")
def _conv_bn_fake_quant_backward_fake(grad_output, input, weight, pre_bn, weight_q, weight_mask, relu_mask,
                                      channel_state, stride, padding, dilation, groups, fold_mode, training, output_mask):
    op = f"fakequant.{_OP}_backward"
    torch._check(len(output_mask) == 3, lambda: f"{op}: output_mask must hold 3 flags, one per output (grad_input, "
                 f"grad_weight, grad_params), got {len(output_mask)}")
    # One tensor on the meta device among real ones dispatches here: check devices as the kernels do,
    # rather than return uninitialised tensors on input's device.
    for name, t in (("grad_output", grad_output), ("weight", weight), ("pre_bn", pre_bn), ("weight_q", weight_q),
                    ("weight_mask", weight_mask), ("relu_mask", relu_mask), ("channel_state", channel_state)):
        torch._check(t.device == input.device, lambda name=name, t=t: f"{op}: {name} must be on the same device as "
                     f"input ({input.device}), got {t.device}")
    fmt = _activation_format(input)
    grad_input = (torch.empty_like(input, memory_format=fmt) if output_mask[0] else input.new_empty((0,)))
    grad_weight = (weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty((0,)))
    grad_params = (input.new_empty((3, weight.shape[0]), dtype=torch.float64) if output_mask[2]
                   else input.new_empty((0,), dtype=torch.float64))
    return grad_input, grad_weight, grad_params


#: Row of the op's [6, C] channel_state holding the fold scale s (include/fakequant/convbn.h kRowScale).
FOLD_SCALE_ROW = 3


class ConvBnFakeQuant(torch.autograd.Function):
    """Value of the fused forward; gradient of the unfused graph (docs/convbn.md). Saved for
    backward: input, weight, the pre-BN activation (training), the quantised fold (running and
    eval), the 1-bit weight and ReLU masks and float64 [6, C] per-channel state.

    Returns ``(output, fold_scale)``: ``fold_scale`` (float64 ``[C]``, not differentiable) is
    the ``s`` the weight was folded with, ``Q(W * s)``, from which a module recovers the
    weight quantizer's scales."""

    @staticmethod
    def forward(ctx, input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding, dilation,
                groups, eps, momentum, mode, training, relu, quantize_weight, quant_min, quant_max, rounding,
                weight_eps):
        output, pre_bn, weight_q, weight_mask, relu_mask, state = torch.ops.fakequant.conv_bn_fake_quant(
            input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding, dilation, groups,
            eps, momentum, mode, training, relu, quantize_weight, quant_min, quant_max, rounding, weight_eps)
        # Batch-mode training differentiates conv(x, W): the quantised fold is not needed.
        conv_weight = weight if (training and mode == "batch") else weight_q
        ctx.save_for_backward(input, weight, pre_bn, conv_weight, weight_mask, relu_mask, state)
        ctx.conv = (stride, padding, dilation, groups, mode, training)
        ctx.param_dtypes = (None if bias is None else bias.dtype, bn_weight.dtype, bn_bias.dtype)
        fold_scale = state[FOLD_SCALE_ROW].clone()
        ctx.mark_non_differentiable(fold_scale)
        return output, fold_scale

    @staticmethod
    def backward(ctx, grad_output, grad_fold_scale=None):
        need = ctx.needs_input_grad
        output_mask = [need[0], need[1], need[2] or need[3] or need[4]]
        none = (None,) * 16
        if not any(output_mask):
            return (None,) * 5 + none
        input, weight, pre_bn, conv_weight, weight_mask, relu_mask, state = ctx.saved_tensors
        stride, padding, dilation, groups, mode, training = ctx.conv
        grad_input, grad_weight, grad_params = torch.ops.fakequant.conv_bn_fake_quant_backward(
            grad_output, input, weight, pre_bn, conv_weight, weight_mask, relu_mask, state, stride, padding,
            dilation, groups, mode, training, output_mask)
        bias_dtype, gamma_dtype, beta_dtype = ctx.param_dtypes
        return (
            grad_input if need[0] else None,
            grad_weight if need[1] else None,
            grad_params[2].to(bias_dtype) if need[2] else None,
            grad_params[0].to(gamma_dtype) if need[3] else None,
            grad_params[1].to(beta_dtype) if need[4] else None,
        ) + none
