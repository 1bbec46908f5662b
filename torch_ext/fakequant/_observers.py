"""Fake (meta) kernels and autograd of the reduction and fused-observer ops.

The fake kernels mirror torch_ext/csrc/observers.cpp: reductions return float32 of shape []
or [C]; the fused observers return (output, mask) laid out like the quant-dequant ops and
update their state tensors in place (declared ``Tensor(a!)`` in the schema, so the fake
kernels touch nothing).
"""

from __future__ import annotations

import torch

from ._registrations import _dense_or_contiguous, _mask_like, _restride_like

_lib = "fakequant"


def _check_devices(op: str, input: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        torch._check(
            t.device == input.device,
            lambda name=name, t=t: f"fakequant.{op}: {name} must be on the same device as input "
            f"({input.device}), got {t.device}",
        )


def _channel_shape(op: str, input: torch.Tensor, axis: int | None) -> list[int]:
    # The axis checks of normalize_axis (torch_ext/csrc/common.cpp), same messages.
    if axis is None:
        return []
    dim = input.dim()
    torch._check(dim >= 1, lambda: f"fakequant.{op}: input must have at least 1 dimension for per-channel "
                 "quantization, got a 0-d tensor")
    torch._check(-dim <= axis < dim, lambda: f"fakequant.{op}: axis must lie in [{-dim}, {dim - 1}] for a {dim}-d "
                 f"input, got {axis}")
    return [input.shape[axis]]


@torch.library.register_fake(f"{_lib}::abs_max")
def _abs_max_fake(input, axis=None):
    return input.new_empty(_channel_shape("abs_max", input, axis), dtype=torch.float32)


@torch.library.register_fake(f"{_lib}::min_max")
def _min_max_fake(input, axis=None):
    shape = _channel_shape("min_max", input, axis)
    return input.new_empty(shape, dtype=torch.float32), input.new_empty(shape, dtype=torch.float32)


def _quant_dequant_outputs(input: torch.Tensor):
    x = _dense_or_contiguous(input)
    return torch.empty_like(x), _mask_like(x)


@torch.library.register_fake(f"{_lib}::fake_quant_moving_average_abs_max")
def _moving_average_abs_max_fake(input, scale, state, accum, moving_rate=0.9, bits=8, training=True,
                                 rounding="half_away"):
    _check_devices("fake_quant_moving_average_abs_max", input, scale=scale, state=state, accum=accum)
    return _quant_dequant_outputs(input)


@torch.library.register_fake(f"{_lib}::fake_quant_range_abs_max")
def _range_abs_max_fake(input, scale, window, iter, bits=8, training=True, rounding="half_away"):
    _check_devices("fake_quant_range_abs_max", input, scale=scale, window=window, iter=iter)
    return _quant_dequant_outputs(input)


@torch.library.register_fake(f"{_lib}::fused_moving_avg_obs_fake_quant")
def _fused_moving_avg_obs_fake_quant_fake(input, observer_on, fake_quant_on, running_min, running_max, scale,
                                          zero_point, averaging_const, quant_min, quant_max, axis=None,
                                          symmetric=False, reduce_range=False, rounding="half_even"):
    _check_devices("fused_moving_avg_obs_fake_quant", input, observer_on=observer_on, fake_quant_on=fake_quant_on,
                   running_min=running_min, running_max=running_max, scale=scale, zero_point=zero_point)
    return _quant_dequant_outputs(input)


class ObserverQuantDequant(torch.autograd.Function):
    """Autograd of the fused observers, which update their state in place and so cannot take
    a formula through torch.library.register_autograd (that needs functional ops): the op
    runs in forward, the 1-bit mask is saved, and backward is the clipped STE
    (fake_quant_mask_backward); the state tensors get no gradient."""

    @staticmethod
    def forward(ctx, op, input, *args):
        output, mask = op(input, *args)
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask)
        ctx.output_stride = output.stride()
        ctx.num_args = len(args)
        return output, mask

    @staticmethod
    def backward(ctx, grad_output, grad_mask):
        (mask,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[1]:
            grad_input = torch.ops.fakequant.fake_quant_mask_backward(_restride_like(grad_output, ctx.output_stride), mask)
        return (None, grad_input) + (None,) * ctx.num_args
