"""Affine quant-dequant, per tensor and per channel: the typed Python API, the fake kernels
and the clipped-STE backward op's fake kernel. (The autograd of the two quant-dequant ops is
a C++ kernel, torch_ext/csrc/autograd.cpp: a Python formula would cost a Python call on every
call of these per-activation ops.)"""

from __future__ import annotations

import torch

from ._common import (
    LIB,
    OPS,
    ROUNDINGS,
    SEED_HIGH,
    check_devices,
    check_rounding_and_seed,
    draw_seed,
    mask_bytes,
    quant_dequant_outputs,
)

__all__ = [
    "ROUNDINGS",
    "SEED_HIGH",
    "fake_quantize_per_channel",
    "fake_quantize_per_channel_with_mask",
    "fake_quantize_per_tensor",
    "fake_quantize_per_tensor_with_mask",
    "masked_grad",
]



def fake_quantize_per_tensor_with_mask(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor affine quant-dequant; returns ``(output, mask)``.

    ``scale`` is a 1-element float32 tensor and ``zero_point`` a 1-element int32 tensor on
    ``input``'s device. ``output`` has ``input``'s dtype (float32, float16 or bfloat16) and
    layout; ``mask`` is the clipped-STE mask packed 1 bit per element (uint8,
    ``ceil(numel / 8)`` bytes, bit ``i % 8`` of byte ``i // 8`` in the output's memory
    order). Differentiable in ``input`` (gradient ``grad * mask``).

    ``rounding="stochastic"`` rounds ``x / scale`` down or up with probabilities that make
    it unbiased (docs/numerics.md); its randomness is a 2-element int64 seed drawn on
    ``input``'s device from ``generator`` (default: torch's default generator, so
    ``torch.manual_seed`` makes runs reproducible). ``generator`` is an error with the
    other modes.
    """
    seed = draw_seed(input, rounding, generator)
    return OPS.fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding, seed)


def fake_quantize_per_tensor(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-tensor affine quant-dequant, a drop-in for
    ``torch.fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max)``
    with the same values on finite inputs (NaN stays NaN here), ``rounding`` in
    :data:`ROUNDINGS` (``generator`` as in :func:`fake_quantize_per_tensor_with_mask`), and a
    1-bit-per-element saved mask instead of a bool tensor."""
    return fake_quantize_per_tensor_with_mask(input, scale, zero_point, quant_min, quant_max, rounding, generator)[0]


def fake_quantize_per_channel_with_mask(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel affine quant-dequant along ``axis`` (negative wraps); returns
    ``(output, mask)`` as :func:`fake_quantize_per_tensor_with_mask` does, with the same
    ``rounding`` and ``generator``.

    ``scale`` is float32 ``[C]`` and ``zero_point`` int32 ``[C]`` (added after rounding) or
    float32 ``[C]`` (added before rounding, ATen's float-zero-point rule), with
    ``C = input.size(axis)``, on ``input``'s device.
    """
    seed = draw_seed(input, rounding, generator)
    return OPS.fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding,
                                                      seed)


def fake_quantize_per_channel(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    rounding: str = "half_even",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-channel affine quant-dequant, a drop-in for
    ``torch.fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max)``
    (same values on finite inputs; NaN stays NaN) with a 1-bit-per-element saved mask and no
    host synchronisation on the GPU. ``rounding`` and ``generator`` as in
    :func:`fake_quantize_per_tensor_with_mask`."""
    return fake_quantize_per_channel_with_mask(input, scale, zero_point, axis, quant_min, quant_max, rounding,
                                               generator)[0]


def masked_grad(grad_output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Clipped straight-through backward: ``grad_output`` where the packed ``mask`` bit is
    set, else 0. ``grad_output`` must be laid out like the forward output."""
    return OPS.fake_quant_mask_backward(grad_output, mask)


# ---------------------------------------------------------------------------------------
# Fake kernels


@torch.library.register_fake(f"{LIB}::fake_quant_per_tensor")
def _fake_quant_per_tensor_fake(input, scale, zero_point, quant_min, quant_max, rounding="half_even", seed=None):
    check_devices("fake_quant_per_tensor", "input", input, scale=scale, zero_point=zero_point)
    check_rounding_and_seed("fake_quant_per_tensor", input, rounding, seed)
    return quant_dequant_outputs(input)


@torch.library.register_fake(f"{LIB}::fake_quant_per_channel")
def _fake_quant_per_channel_fake(input, scale, zero_point, axis, quant_min, quant_max, rounding="half_even",
                                 seed=None):
    check_devices("fake_quant_per_channel", "input", input, scale=scale, zero_point=zero_point)
    check_rounding_and_seed("fake_quant_per_channel", input, rounding, seed)
    return quant_dequant_outputs(input)


@torch.library.register_fake(f"{LIB}::fake_quant_mask_backward")
def _fake_quant_mask_backward_fake(grad_output, mask):
    # The checks of prepare_masked_grad (torch_ext/csrc/fake_quant.cpp), same messages.
    op = "fakequant.fake_quant_mask_backward"
    torch._check(mask.dtype == torch.uint8, lambda: f"{op}: mask must be a uint8 tensor, got {mask.dtype}")
    torch._check(mask.dim() == 1, lambda: f"{op}: mask must be a contiguous 1-D tensor, got shape {list(mask.shape)}")
    n = grad_output.numel()
    torch._check(mask.numel() == mask_bytes(n), lambda: f"{op}: mask must have ceil(numel / 8) = {mask_bytes(n)} "
                 f"bytes for grad_output of {n} elements, got {mask.numel()}")
    check_devices("fake_quant_mask_backward", "grad_output", grad_output, mask=mask)
    return torch.empty_like(grad_output)
