"""Fake (meta) kernels and autograd of the learnable-qparam (LSQ / LSQ+) ops.

The fake kernels mirror the C++ allocation rules in torch_ext/csrc/learnable.cpp: the output
and grad_input keep a dense input's strides (anything else is made contiguous);
grad_scale / grad_zero_point are float32 and shaped like scale / zero_point; outputs left out
by output_mask are empty ([0]) tensors.

Autograd saves the input, scale and zero_point themselves (references, no copies): the scale
gradient needs x (docs/numerics.md, "Learnable scale and zero point").
"""

from __future__ import annotations

import torch

from ._registrations import _check_output_mask, _check_same_device, _dense_or_contiguous

_lib = "fakequant"


@torch.library.register_fake(f"{_lib}::fake_quant_learnable_per_tensor")
def _per_tensor_fake(input, scale, zero_point, quant_min, quant_max, grad_factor=1.0):
    _check_same_device("fake_quant_learnable_per_tensor", input, scale, zero_point)
    return torch.empty_like(_dense_or_contiguous(input))


@torch.library.register_fake(f"{_lib}::fake_quant_learnable_per_channel")
def _per_channel_fake(input, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0):
    _check_same_device("fake_quant_learnable_per_channel", input, scale, zero_point)
    return torch.empty_like(_dense_or_contiguous(input))


def _backward_fake(op, grad_output, input, scale, zero_point, output_mask):
    _check_output_mask(op, output_mask, "grad_input, grad_scale, grad_zero_point")
    _check_same_device(op, input, scale, zero_point)
    torch._check(grad_output.device == input.device,
                 lambda: f"fakequant.{op}: grad_output must be on the same device as input ({input.device}), "
                 f"got {grad_output.device}")
    x = _dense_or_contiguous(input)
    grad_input = torch.empty_like(x) if output_mask[0] else x.new_empty((0,))
    grad_scale = scale.new_empty(scale.shape, dtype=torch.float32) if output_mask[1] else \
        scale.new_empty((0,), dtype=torch.float32)
    grad_zero_point = zero_point.new_empty(zero_point.shape, dtype=torch.float32) if output_mask[2] else \
        zero_point.new_empty((0,), dtype=torch.float32)
    return grad_input, grad_scale, grad_zero_point


@torch.library.register_fake(f"{_lib}::fake_quant_learnable_per_tensor_backward")
def _per_tensor_backward_fake(grad_output, input, scale, zero_point, quant_min, quant_max, grad_factor=1.0,
                              output_mask=(True, True, True)):
    return _backward_fake("fake_quant_learnable_per_tensor_backward", grad_output, input, scale, zero_point,
                          output_mask)


@torch.library.register_fake(f"{_lib}::fake_quant_learnable_per_channel_backward")
def _per_channel_backward_fake(grad_output, input, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0,
                               output_mask=(True, True, True)):
    return _backward_fake("fake_quant_learnable_per_channel_backward", grad_output, input, scale, zero_point,
                          output_mask)


def _setup_context(ctx, inputs, output):
    input, scale, zero_point = inputs[:3]
    ctx.save_for_backward(input, scale, zero_point)
    ctx.scalars = inputs[3:]  # (axis,) quant_min, quant_max, grad_factor
    ctx.num_inputs = len(inputs)


def _make_backward(backward_op):
    def backward(ctx, grad_output):
        input, scale, zero_point = ctx.saved_tensors
        needed = [bool(n) for n in ctx.needs_input_grad[:3]]
        grads = [None, None, None]
        if any(needed):
            grads = list(backward_op(grad_output, input, scale, zero_point, *ctx.scalars, needed))
            grads = [g if n else None for g, n in zip(grads, needed)]
        return tuple(grads) + (None,) * (ctx.num_inputs - 3)

    return backward


torch.library.register_autograd(
    f"{_lib}::fake_quant_learnable_per_tensor",
    _make_backward(torch.ops.fakequant.fake_quant_learnable_per_tensor_backward),
    setup_context=_setup_context)
torch.library.register_autograd(
    f"{_lib}::fake_quant_learnable_per_channel",
    _make_backward(torch.ops.fakequant.fake_quant_learnable_per_channel_backward),
    setup_context=_setup_context)
