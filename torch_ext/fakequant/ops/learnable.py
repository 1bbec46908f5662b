"""The learnable-qparam (LSQ / LSQ+) ops: the typed Python API and the fake kernels. The
autograd is a C++ kernel (torch_ext/csrc/autograd.cpp) calling the backward ops.

The fake kernels mirror the C++ allocation rules of torch_ext/csrc/learnable.cpp: the output
and grad_input keep a dense input's strides (anything else is made contiguous);
grad_scale / grad_zero_point are float32 and shaped like scale / zero_point; outputs left out
by output_mask are empty ([0]) tensors.

Autograd saves the input, scale and zero_point themselves (references, no copies): the scale
gradient needs x (docs/numerics.md, "Learnable scale and zero point"); the backward op computes
only the gradients that are needed (output_mask).
"""

from __future__ import annotations

import torch

from ._common import LIB, OPS, check_devices, check_output_mask, dense_or_contiguous

__all__ = ["fake_quantize_learnable_per_channel", "fake_quantize_learnable_per_tensor"]



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
    return OPS.fake_quant_learnable_per_tensor(input, scale, zero_point, quant_min, quant_max,
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
    return OPS.fake_quant_learnable_per_channel(input, scale, zero_point, axis, quant_min,
                                                                quant_max, grad_factor)


# ---------------------------------------------------------------------------------------
# Fake kernels


@torch.library.register_fake(f"{LIB}::fake_quant_learnable_per_tensor")
def _per_tensor_fake(input, scale, zero_point, quant_min, quant_max, grad_factor=1.0):
    check_devices("fake_quant_learnable_per_tensor", "input", input, scale=scale, zero_point=zero_point)
    return torch.empty_like(dense_or_contiguous(input))


@torch.library.register_fake(f"{LIB}::fake_quant_learnable_per_channel")
def _per_channel_fake(input, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0):
    check_devices("fake_quant_learnable_per_channel", "input", input, scale=scale, zero_point=zero_point)
    return torch.empty_like(dense_or_contiguous(input))


def _backward_fake(op, grad_output, input, scale, zero_point, output_mask):
    check_output_mask(op, output_mask, "grad_input, grad_scale, grad_zero_point")
    check_devices(op, "input", input, scale=scale, zero_point=zero_point, grad_output=grad_output)
    x = dense_or_contiguous(input)
    grad_input = torch.empty_like(x) if output_mask[0] else x.new_empty((0,))
    grad_scale = scale.new_empty(scale.shape, dtype=torch.float32) if output_mask[1] else \
        scale.new_empty((0,), dtype=torch.float32)
    grad_zero_point = zero_point.new_empty(zero_point.shape, dtype=torch.float32) if output_mask[2] else \
        zero_point.new_empty((0,), dtype=torch.float32)
    return grad_input, grad_scale, grad_zero_point


@torch.library.register_fake(f"{LIB}::fake_quant_learnable_per_tensor_backward")
def _per_tensor_backward_fake(grad_output, input, scale, zero_point, quant_min, quant_max, grad_factor=1.0,
                              output_mask=(True, True, True)):
    return _backward_fake("fake_quant_learnable_per_tensor_backward", grad_output, input, scale, zero_point,
                          output_mask)


@torch.library.register_fake(f"{LIB}::fake_quant_learnable_per_channel_backward")
def _per_channel_backward_fake(grad_output, input, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0,
                               output_mask=(True, True, True)):
    return _backward_fake("fake_quant_learnable_per_channel_backward", grad_output, input, scale, zero_point,
                          output_mask)
