"""PyTorch's moving-average min/max quantizers: ``MovingAverageMinMaxFakeQuantize`` and
``MovingAveragePerChannelMinMaxFakeQuantize`` (the fused ``fused_moving_avg_obs_fake_quant`` op)."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as _distributed
from .. import export as _export
from .. import ops as _ops
from ..ops import FLOAT32_EPS
from .base import (
    FakeQuantizeBase,
    _PER_CHANNEL,
    _PER_TENSOR,
    _SYMMETRIC,
    _channels_along,
    _check_dtype_range,
    _check_rounding,
    _eps_arg,
    _float_arg,
    _int_arg,
    _take_spec,
    _to_factory_device,
)


def _qmin_qmax(quant_min: int, quant_max: int, reduce_range: bool) -> tuple[int, int]:
    """torch.ao's calculate_qmin_qmax for a customised range: reduce_range halves both ends."""
    return (quant_min // 2, quant_max // 2) if reduce_range else (quant_min, quant_max)


class _MinMaxState(nn.Module):
    """Holds ``min_val`` / ``max_val`` / ``eps`` under the names of PyTorch's
    ``MovingAverage(PerChannel)MinMaxObserver``, so that the state-dict keys
    (``activation_post_process.min_val`` ...) are those of ``FusedMovingAvgObsFakeQuantize``.
    ``_version`` is the observers' (3: ``min_val`` / ``max_val`` names, ``eps`` a buffer), which
    their ``_load_from_state_dict`` reads from the state dict's metadata."""

    _version = 3

    def __init__(self, per_channel: bool, eps: float) -> None:
        super().__init__()
        shape = (0,) if per_channel else ()
        self.register_buffer("min_val", torch.full(shape, float("inf")))
        self.register_buffer("max_val", torch.full(shape, float("-inf")))
        self.register_buffer("eps", torch.tensor([eps], dtype=torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict and getattr(self, name).shape != state_dict[key].shape:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x):  # never called; present so that the module is a complete nn.Module
        return x


class MovingAverageMinMaxFakeQuantize(FakeQuantizeBase):
    """Drop-in for ``torch.ao.quantization.FusedMovingAvgObsFakeQuantize`` (e.g.
    ``default_fused_act_fake_quant``) over ``fakequant.fused_moving_avg_obs_fake_quant``.

    Per tensor or per channel (``qscheme`` per_channel_*: along ``ch_axis``, any axis),
    affine or symmetric. One fused op per forward reads ``observer_enabled`` /
    ``fake_quant_enabled`` (int64 ``[1]``, as PyTorch's fused module) on the device, updates
    the running min/max (``m += c*(cur - m)``, first step takes ``cur``) and the ``scale`` /
    ``zero_point`` buffers, and quant-dequantises; bit-exact with PyTorch's module on the
    CPU, with no host synchronisation on CUDA. Observation does not depend on
    ``train()``/``eval()`` (as PyTorch's); use ``disable_observer()``.

    The state dict has the keys of PyTorch's module (``fake_quant_enabled``,
    ``observer_enabled``, ``scale``, ``zero_point``, ``activation_post_process.{eps,
    min_val, max_val}``) and loads in either direction (docs/qat.md). ``eps`` is kept for that
    and for ``calculate_qparams`` compatibility only: the op, like ATen's fused op, uses
    ChooseQuantizationParams' own small-scale cut-off. ``observer`` (if given) must be one of
    torch.ao's moving-average min/max observer classes; it only documents intent.
    """

    # Observes its input: fakequant.distributed.sync_observers combines the statistic across ranks.
    _synchronisable = True

    _flag_dtype = torch.int64
    _resizable = ("scale", "zero_point")

    def __init__(self, quant_min: int = 0, quant_max: int = 255, dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_tensor_affine, averaging_constant: float = 0.01,
                 reduce_range: bool = False, ch_axis: int = 0, eps: float = FLOAT32_EPS,
                 rounding: str = "half_even", ahead_relu: bool = False, **observer_kwargs) -> None:
        super().__init__()
        name = type(self).__name__
        observer = observer_kwargs.pop("observer", None)
        if observer is not None:
            base = getattr(getattr(observer, "p", None), "func", observer)
            if getattr(base, "__name__", "") not in ("MovingAverageMinMaxObserver",
                                                     "MovingAveragePerChannelMinMaxObserver"):
                raise ValueError(f"{name}: observer must be a moving-average min/max observer, got {observer!r}")
        if qscheme not in _PER_CHANNEL + _PER_TENSOR:
            raise ValueError(f"{name}: qscheme must be one of {list(_PER_TENSOR + _PER_CHANNEL)}, got {qscheme}")
        _check_rounding(name, rounding)
        averaging_constant = _float_arg(name, "averaging_constant", averaging_constant, 0.0, 1.0)
        quant_min, quant_max = _int_arg(name, "quant_min", quant_min), _int_arg(name, "quant_max", quant_max)
        ch_axis = _int_arg(name, "ch_axis", ch_axis)
        eps = _eps_arg(name, eps)
        _check_dtype_range(name, dtype, quant_min, quant_max)
        if not quant_min <= 0 <= quant_max:
            raise ValueError(f"{name}: the range must include 0, got [{quant_min}, {quant_max}]")
        spec_ch_axis = observer_kwargs.get("ch_axis")
        _take_spec(name, observer_kwargs, dtype=dtype, quant_min=quant_min, quant_max=quant_max, qscheme=qscheme,
                   ch_axis=ch_axis if spec_ch_axis is None else spec_ch_axis)
        self.is_per_channel = qscheme in _PER_CHANNEL
        self.ch_axis = int(ch_axis) if self.is_per_channel else -1
        self.dtype = dtype
        self.qscheme = qscheme
        self.is_symmetric_quant = qscheme in _SYMMETRIC
        self.reduce_range = bool(reduce_range)
        self.quant_min, self.quant_max = _qmin_qmax(quant_min, quant_max, self.reduce_range)
        self.averaging_constant = float(averaging_constant)
        self.rounding = rounding
        self.ahead_relu = bool(ahead_relu)
        self.activation_post_process = _MinMaxState(self.is_per_channel, eps)
        # The observer attributes torch.ao's convert reads from activation_post_process.
        for attr in ("quant_min", "quant_max", "dtype", "qscheme", "ch_axis", "reduce_range", "averaging_constant"):
            setattr(self.activation_post_process, attr, getattr(self, attr))
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))
        _to_factory_device(self, observer_kwargs)

    @property
    def min_val(self) -> torch.Tensor:
        return self.activation_post_process.min_val

    @property
    def max_val(self) -> torch.Tensor:
        return self.activation_post_process.max_val

    def init_channels(self, channels: int) -> None:
        """Size the per-channel statistics (``+inf`` / ``-inf``: nothing observed yet) and qparams
        for ``channels`` channels; a no-op per tensor or when already sized."""
        if self.is_per_channel:
            self._channels_ready(_int_arg(type(self).__name__, "channels", channels, 1))

    def _channels_ready(self, channels: int) -> None:
        """Size the per-channel state on the first input (PyTorch's per-channel observer starts
        with empty statistics too) unless ``init_channels`` did; a host-side shape check, no
        synchronisation."""
        st = self.activation_post_process
        if st.min_val.numel() == 0:
            with torch.no_grad():
                st.min_val.resize_(channels).fill_(float("inf"))
                st.max_val.resize_(channels).fill_(float("-inf"))
        if self.scale.numel() != st.min_val.numel():
            with torch.no_grad():
                self.scale.resize_(st.min_val.shape).fill_(1.0)
                self.zero_point.resize_(st.min_val.shape).zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ahead_relu:
            x = torch.relu(x)
        axis = None
        if self.is_per_channel:
            axis = self.ch_axis
            self._channels_ready(_channels_along(type(self).__name__, x, axis))
        st = self.activation_post_process
        if _export.onnx_exporting():
            # torch.export keeps the fused op (a stateful program, exact); ONNX gets no in-place update.
            if self._observer_on:
                raise _export.observing_error(self)
            if not self._fake_quant_on:
                return x
            # The non-mutating quant-dequant op with the stored qparams (refresh_qparams() makes them the
            # ones the fused op would recompute from the running min/max; to_onnx calls it).
            if axis is None:
                return _ops.fake_quantize_per_tensor(x, self.scale, self.zero_point, self.quant_min,
                                                     self.quant_max, self.rounding)
            return _ops.fake_quantize_per_channel(x, self.scale, self.zero_point, axis, self.quant_min,
                                                  self.quant_max, self.rounding)
        observer_on = self.observer_enabled
        group = _distributed.per_batch_group(self) if self._observer_on else None
        if group is not None:
            # The batch's min / max combined across the group, then the state updated with them by the
            # op itself (over a tensor holding just them: [min, max], per channel along dim 0), fake
            # quant off; the input is then quantized with the observer off (fakequant.distributed).
            lo, hi = _ops.min_max(x.detach(), axis)
            lo, hi = _distributed.global_min_max(lo, hi, group)
            stat = torch.stack([lo, hi], dim=-1)
            _ops.fused_moving_avg_obs_fake_quant(
                stat, self.observer_enabled, torch.zeros_like(self.fake_quant_enabled), st.min_val, st.max_val,
                self.scale, self.zero_point, self.averaging_constant, self.quant_min, self.quant_max,
                None if axis is None else 0, self.is_symmetric_quant, False, self.rounding)
            observer_on = torch.zeros_like(self.observer_enabled)
        return _ops.fused_moving_avg_obs_fake_quant(
            x, observer_on, self.fake_quant_enabled, st.min_val, st.max_val, self.scale, self.zero_point,
            self.averaging_constant, self.quant_min, self.quant_max, axis, self.is_symmetric_quant, False,
            self.rounding)

    def _bucket_states(self):
        """fakequant.distributed's bucketed mode: the running min (the group's minimum) and max."""
        st = self.activation_post_process
        return [(st.min_val, -1), (st.max_val, 1)]

    @torch.no_grad()
    def _after_bucket(self) -> None:
        # The qparams of the combined min/max (no host read: calculate_qparams, not refresh_qparams).
        scale, zero_point = self.calculate_qparams()
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))

    @torch.no_grad()
    def refresh_qparams(self) -> None:
        """Store in ``scale`` / ``zero_point`` the qparams of the running min/max. The fused op
        recomputes them on every call that fake-quantizes (as ATen's does), so they only differ from
        the stored ones when the statistics changed without fake quant on; an ONNX export, which
        uses the stored ones, calls this first (``fakequant.export.to_onnx``)."""
        if self.min_val.numel() == 0 or bool((self.min_val > self.max_val).any()):
            return  # nothing observed: the op has no qparams of its own to give
        scale, zero_point = self.calculate_qparams()
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))

    @torch.no_grad()
    def calculate_qparams(self):
        """The qparams the forward quantizes with, computed from the current running min/max
        by the same op (ATen's ChooseQuantizationParams; see docs/qat.md for how this differs
        from torch.ao's observer formula); ``(1.0, 0)`` for what has not seen data yet (torch.ao's
        default), e.g. ``([1.0], [0])`` before a per-channel module is sized."""
        st = self.activation_post_process
        if self.is_per_channel and st.min_val.numel() == 0:
            return (torch.ones(1, device=self.scale.device), torch.zeros(1, dtype=torch.int32,
                                                                         device=self.scale.device))
        channels = st.min_val.numel() if self.is_per_channel else 1
        scale = torch.empty(channels, dtype=torch.float32, device=self.scale.device)
        zero_point = torch.empty(channels, dtype=torch.int32, device=self.scale.device)
        empty = scale.new_empty((channels, 0)) if self.is_per_channel else scale.new_empty((0,))
        off = torch.zeros(1, dtype=torch.int64, device=scale.device)
        on = torch.ones(1, dtype=torch.int64, device=scale.device)
        torch.ops.fakequant.fused_moving_avg_obs_fake_quant(
            empty, off, on, st.min_val.clone(), st.max_val.clone(), scale, zero_point, self.averaging_constant,
            self.quant_min, self.quant_max, 0 if self.is_per_channel else None, self.is_symmetric_quant, False,
            self.rounding)
        # min > max only before the first observation (+inf / -inf): torch.ao's default qparams there.
        unobserved = (st.min_val > st.max_val).reshape(scale.shape)
        return (torch.where(unobserved, torch.ones_like(scale), scale),
                torch.where(unobserved, torch.zeros_like(zero_point), zero_point))

    def extra_repr(self) -> str:
        return (f"{self._flags_repr()}, quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
                f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, reduce_range={self.reduce_range}, "
                f"averaging_constant={self.averaging_constant}, rounding={self.rounding!r}, "
                f"ahead_relu={self.ahead_relu}, scale={self.scale}, zero_point={self.zero_point}")


class MovingAveragePerChannelMinMaxFakeQuantize(MovingAverageMinMaxFakeQuantize):
    """:class:`MovingAverageMinMaxFakeQuantize` with the defaults of
    ``default_fused_per_channel_wt_fake_quant``: qint8 ``[-128, 127]``,
    ``per_channel_symmetric`` along ``ch_axis=0``."""

    def __init__(self, quant_min: int = -128, quant_max: int = 127, dtype: torch.dtype = torch.qint8,
                 qscheme: torch.qscheme = torch.per_channel_symmetric, averaging_constant: float = 0.01,
                 reduce_range: bool = False, ch_axis: int = 0, eps: float = FLOAT32_EPS,
                 rounding: str = "half_even", ahead_relu: bool = False, **observer_kwargs) -> None:
        super().__init__(quant_min, quant_max, dtype, qscheme, averaging_constant, reduce_range, ch_axis, eps,
                         rounding, ahead_relu, **observer_kwargs)
