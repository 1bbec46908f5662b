"""Fake (meta) kernel and autograd formula of fakequant.fake_quant_weight_abs_max.

The fake kernel mirrors torch_ext/csrc/weight_quant.cpp: output laid out like the (dense or
made contiguous) weight, a mask of ceil(numel / 8) bytes, a float32 scale of size(axis).
"""

from __future__ import annotations

import torch

from ._registrations import _dense_or_contiguous, _lib, _mask_like, _masked_backward, _masked_setup_context

_OP = "fake_quant_weight_abs_max"


@torch.library.register_fake(f"{_lib}::{_OP}")
def _fake_quant_weight_abs_max_fake(weight, axis, quant_min, quant_max, rounding="half_even",
                                    eps=1.1920928955078125e-07):
    dim = weight.dim()
    torch._check(dim >= 1, lambda: f"fakequant.{_OP}: weight must have at least 1 dimension for "
                 "per-channel quantization, got a 0-d tensor")
    torch._check(-dim <= axis < dim, lambda: f"fakequant.{_OP}: axis must lie in [{-dim}, {dim - 1}] for a "
                 f"{dim}-d weight, got {axis}")
    w = _dense_or_contiguous(weight)
    channels = w.shape[axis % dim]
    return torch.empty_like(w), _mask_like(w), w.new_empty((channels,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    # The scale comes from an observer-like reduction (PyTorch runs its observers under
    # no_grad): no gradient flows through it.
    ctx.mark_non_differentiable(output[2])
    _masked_setup_context(ctx, inputs, output[:2])


def _backward(ctx, grad_output, grad_mask, grad_scale):
    """Clipped STE for the weight with the saved 1-bit mask; nothing for the scale."""
    return _masked_backward(ctx, grad_output, grad_mask)


torch.library.register_autograd(f"{_lib}::{_OP}", _backward, setup_context=_setup_context)
