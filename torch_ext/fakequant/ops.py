"""Typed Python API over torch.ops.fakequant.*."""

from __future__ import annotations

import torch

#: Rounding modes accepted by the quant-dequant ops.
ROUNDINGS = ("half_even", "half_away", "stochastic")

#: Each seed word (Philox key, counter offset) is drawn uniformly from [0, SEED_HIGH): 62
#: random bits each, a range whose width every randint implementation (eager, and
#: torch.compile's CPU and Triton lowerings, which compute high - low in int64) represents.
SEED_HIGH = 2**62


def _draw_seed(input: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor | None:
    """The seed tensor of stochastic rounding, drawn on ``input``'s device from ``generator``
    (the default generator when None): no host synchronisation, captured by CUDA graphs and
    traced by torch.compile like any random op. None for the deterministic modes, which
    reject a generator rather than ignore it."""
    if rounding != "stochastic":
        if generator is not None:
            raise ValueError(f"generator is only used by rounding='stochastic', got rounding={rounding!r}")
        return None
    return torch.randint(0, SEED_HIGH, (2,), dtype=torch.int64, device=input.device, generator=generator)


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
    seed = _draw_seed(input, rounding, generator)
    return torch.ops.fakequant.fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding, seed)


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
    seed = _draw_seed(input, rounding, generator)
    return torch.ops.fakequant.fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding,
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
    return torch.ops.fakequant.fake_quant_mask_backward(grad_output, mask)
