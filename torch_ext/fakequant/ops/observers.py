"""The fused observers (Paddle's moving_average_abs_max and range_abs_max, PyTorch's
moving-average min/max): the typed Python API, the fake kernels and the autograd.

The ops update their state tensors in place (``Tensor(a!)`` in the schema, so the fake kernels
touch nothing) and return ``(output, mask)`` laid out like the quant-dequant ops; their autograd
is in C++ (torch_ext/csrc/autograd.cpp: the clipped STE on the saved mask).
"""

from __future__ import annotations

import torch

from ._common import LIB, OPS, check_devices, quant_dequant_outputs

__all__ = ["fake_quantize_moving_average_abs_max", "fake_quantize_range_abs_max", "fused_moving_avg_obs_fake_quant"]


def fake_quantize_moving_average_abs_max(
    input: torch.Tensor,
    scale: torch.Tensor,
    state: torch.Tensor,
    accum: torch.Tensor,
    moving_rate: float = 0.9,
    bits: int = 8,
    training: bool = True,
    rounding: str = "half_away",
) -> torch.Tensor:
    """Paddle's ``fake_quantize_dequantize_moving_average_abs_max``.

    ``scale``, ``state`` and ``accum`` are one-element float32 tensors on ``input``'s device.
    In training they are updated in place (``state = r*state + 1``,
    ``accum = r*accum + max|x|``, ``scale = accum/state``) and ``input`` is quantized with the
    new scale; in eval the stored scale is used and nothing changes. Quantization is
    symmetric: step ``scale / (2**(bits-1) - 1)``, levels ``±(2**(bits-1) - 1)``.
    ``rounding`` defaults to ``half_away`` (Paddle's ``round_type=1``). Differentiable in
    ``input`` (clipped straight-through estimator).
    """
    return OPS.fake_quant_moving_average_abs_max(input, scale, state, accum, moving_rate, bits, training, rounding)[0]


def fake_quantize_range_abs_max(
    input: torch.Tensor,
    scale: torch.Tensor,
    window: torch.Tensor,
    iter: torch.Tensor,
    bits: int = 8,
    training: bool = True,
    rounding: str = "half_away",
) -> torch.Tensor:
    """Paddle's ``fake_quantize_range_abs_max`` (quant-dequant form).

    ``window`` (float32 ``[window_size]``) holds the abs-max of the last ``window_size``
    training steps, ``iter`` (int64 ``[1]``) counts the steps, ``scale`` (float32 ``[1]``) is
    the window's maximum; all three live on ``input``'s device and are updated in place in
    training, with no host synchronisation even when the maximum leaves the window.
    """
    return OPS.fake_quant_range_abs_max(input, scale, window, iter, bits, training, rounding)[0]


def fused_moving_avg_obs_fake_quant(
    input: torch.Tensor,
    observer_on: torch.Tensor,
    fake_quant_on: torch.Tensor,
    running_min: torch.Tensor,
    running_max: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    averaging_const: float,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
    symmetric: bool = False,
    reduce_range: bool = False,
    rounding: str = "half_even",
) -> torch.Tensor:
    """PyTorch's moving-average min/max observer fused with the qparam choice and
    quant-dequant: a drop-in for ``torch.fused_moving_avg_obs_fake_quant`` (per tensor when
    ``axis`` is None, else per channel along any ``axis``), with fp16/bf16 inputs, a 1-bit
    saved mask and no host synchronisation. ``observer_on`` / ``fake_quant_on`` are int64
    ``[1]`` tensors read on the device; ``running_min``, ``running_max``, ``scale`` (float32)
    and ``zero_point`` (int32) are updated in place."""
    return OPS.fused_moving_avg_obs_fake_quant(
        input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const, quant_min,
        quant_max, axis, symmetric, reduce_range, rounding)[0]


# ---------------------------------------------------------------------------------------
# Fake kernels


@torch.library.register_fake(f"{LIB}::fake_quant_moving_average_abs_max")
def _moving_average_abs_max_fake(input, scale, state, accum, moving_rate=0.9, bits=8, training=True,
                                 rounding="half_away"):
    check_devices("fake_quant_moving_average_abs_max", "input", input, scale=scale, state=state, accum=accum)
    return quant_dequant_outputs(input)


@torch.library.register_fake(f"{LIB}::fake_quant_range_abs_max")
def _range_abs_max_fake(input, scale, window, iter, bits=8, training=True, rounding="half_away"):
    check_devices("fake_quant_range_abs_max", "input", input, scale=scale, window=window, iter=iter)
    return quant_dequant_outputs(input)


@torch.library.register_fake(f"{LIB}::fused_moving_avg_obs_fake_quant")
def _fused_moving_avg_obs_fake_quant_fake(input, observer_on, fake_quant_on, running_min, running_max, scale,
                                          zero_point, averaging_const, quant_min, quant_max, axis=None,
                                          symmetric=False, reduce_range=False, rounding="half_even"):
    check_devices("fused_moving_avg_obs_fake_quant", "input", input, observer_on=observer_on,
                  fake_quant_on=fake_quant_on, running_min=running_min, running_max=running_max, scale=scale,
                  zero_point=zero_point)
    return quant_dequant_outputs(input)
