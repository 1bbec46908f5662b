"""The reductions observers are built from, ``abs_max`` and ``min_max``: the typed Python API
and the fake kernels (float32 results of shape ``[]`` or ``[C]``, as torch_ext/csrc/observers.cpp
allocates them)."""

from __future__ import annotations

import torch

from ._common import LIB, OPS, channel_shape

__all__ = ["abs_max", "min_max"]



def abs_max(input: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """``max |input|`` in float32: over the whole tensor (0-d result) or per channel along
    ``axis`` (``[input.size(axis)]``). NaN propagates (as ``torch.amax``); an empty
    reduction gives 0. Computed on ``input``'s device without host synchronisation."""
    return OPS.abs_max(input, axis)


def min_max(input: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``input`` in float32, whole tensor or per channel along ``axis``, as
    ``torch.aminmax`` (NaN propagates); an empty reduction gives ``(+inf, -inf)``."""
    return OPS.min_max(input, axis)


@torch.library.register_fake(f"{LIB}::abs_max")
def _abs_max_fake(input, axis=None):
    return input.new_empty(channel_shape("abs_max", input, axis), dtype=torch.float32)


@torch.library.register_fake(f"{LIB}::min_max")
def _min_max_fake(input, axis=None):
    shape = channel_shape("min_max", input, axis)
    return input.new_empty(shape, dtype=torch.float32), input.new_empty(shape, dtype=torch.float32)
