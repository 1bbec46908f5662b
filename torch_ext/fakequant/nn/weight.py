"""The weight quantizer from the weight's own abs-max: ``AbsMaxWeightFakeQuantize``."""

from __future__ import annotations

import torch

from .. import export as _export
from .. import ops as _ops
from ..ops import FLOAT32_EPS
from ..ops import fake_quantize_weight_abs_max
from .base import (
    FakeQuantizeBase,
    _channels_along,
    _check_rounding,
    _eps_arg,
    _int_arg,
    _signed_dtype,
    _take_spec,
    _to_factory_device,
)


class AbsMaxWeightFakeQuantize(FakeQuantizeBase):
    """Weight fake quantization with symmetric abs-max scales taken from the current weight at
    every step: per channel along ``ch_axis`` through ``fakequant.fake_quantize_weight_abs_max``
    (one fused op), or per tensor (``ch_axis=None``) through ``fakequant.abs_max`` +
    ``fakequant.fake_quantize_per_tensor``.

    ``scale = max(absmax / ((quant_max - quant_min) / 2), eps)``, zero point 0: the values of
    ``torch.ao.quantization.FakeQuantize`` with ``PerChannelMinMaxObserver``
    (per_channel_symmetric, qint8) for the default ``[-128, 127]`` when that observer is reset
    every step (it keeps the extremes of every call; this scale follows the current weight,
    as Paddle's abs-max does); ``quant_min=-127`` is
    Paddle's ``channel_wise_abs_max``. The ``scale`` / ``zero_point`` buffers keep the last
    scales; with the observer disabled they are reused. ``quant_min``, ``quant_max``,
    ``ch_axis``, ``rounding`` and ``eps`` are public (fused conv-bn modules read them).
    """

    _resizable = ("scale", "zero_point")

    def __init__(self, quant_min: int = -128, quant_max: int = 127, ch_axis: int | None = 0,
                 rounding: str = "half_even", eps: float = FLOAT32_EPS, **spec) -> None:
        super().__init__()
        name = type(self).__name__
        quant_min, quant_max = _int_arg(name, "quant_min", quant_min), _int_arg(name, "quant_max", quant_max)
        if ch_axis is not None:
            ch_axis = _int_arg(name, "ch_axis", ch_axis)
        eps = _eps_arg(name, eps)
        if not (quant_max >= 1 and quant_min in (-quant_max, -quant_max - 1)):
            raise ValueError(f"{name}: the range must be symmetric, quant_min == -quant_max (narrow) or "
                             f"-quant_max - 1 (full), got [{quant_min}, {quant_max}]")
        _check_rounding(name, rounding)
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        self.ch_axis = ch_axis
        self.rounding = rounding
        self.eps = float(eps)
        self.is_per_channel = ch_axis is not None
        self.qscheme = torch.per_channel_symmetric if self.is_per_channel else torch.per_tensor_symmetric
        mine = dict(dtype=_signed_dtype(self.quant_min, self.quant_max), quant_min=self.quant_min,
                    quant_max=self.quant_max, qscheme=self.qscheme)
        if self.is_per_channel:
            mine["ch_axis"] = ch_axis
        self.dtype = _take_spec(name, spec, **mine)
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))
        _to_factory_device(self, spec)

    def init_channels(self, channels: int) -> None:
        """Size ``scale`` (ones) and ``zero_point`` (zeros) for ``channels`` channels before the
        first forward; a no-op per tensor or when already sized."""
        if self.is_per_channel:
            channels = _int_arg(type(self).__name__, "channels", channels, 1)
            if self.scale.numel() != channels:
                with torch.no_grad():
                    self.scale.resize_(channels).fill_(1.0)
                    self.zero_point.resize_(channels).zero_()

    def _store_scale(self, scale: torch.Tensor) -> None:
        if _export.exporting():
            return  # an inference graph needs the value, not the record of the last scales
        with torch.no_grad():
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(scale.shape).zero_()
            self.scale.copy_(scale)

    def _per_tensor_scale(self, w: torch.Tensor) -> torch.Tensor:
        amax = _ops.abs_max(w.detach()).reshape(1)
        return torch.clamp(amax / (float(self.quant_max - self.quant_min) / 2), min=self.eps)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.is_per_channel:
            _channels_along(type(self).__name__, w, self.ch_axis)
        if self._observer_on:
            if self.is_per_channel:
                out, scale = fake_quantize_weight_abs_max(w, self.ch_axis, self.quant_min, self.quant_max,
                                                          self.rounding, self.eps)
                self._store_scale(scale)
                return out if self._fake_quant_on else w
            scale = self._per_tensor_scale(w)
            self._store_scale(scale)
        else:
            scale = self.scale
        if not self._fake_quant_on:
            return w
        if self.is_per_channel:
            return _ops.fake_quantize_per_channel(w, scale, self.zero_point, self.ch_axis, self.quant_min,
                                                  self.quant_max, self.rounding)
        # The scale just computed (not the buffer, which an export does not write).
        return _ops.fake_quantize_per_tensor(w, scale, self.zero_point, self.quant_min, self.quant_max,
                                             self.rounding)

    @torch.no_grad()
    def calculate_qparams(self):
        """The last scales (float32) and zero points (int32 zeros)."""
        return self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return (f"{self._flags_repr()}, quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
                f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, rounding={self.rounding!r}, eps={self.eps}, "
                f"scale={self.scale}")
