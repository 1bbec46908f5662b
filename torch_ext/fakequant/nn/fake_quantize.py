"""Fake-quantize modules over the fused fakequant ops (docs/qat.md).

Common to every class here:

* ``fake_quant_enabled`` / ``observer_enabled`` are ``[1]`` buffers (uint8 as in
  ``FakeQuantizeBase``; int64 in the moving-average min/max classes, as in PyTorch's
  ``FusedMovingAvgObsFakeQuantize``, whose op reads them on the device). Where an op takes
  the switches as host arguments (the Paddle observers, the weight abs-max, the learnable
  ops) the module keeps a host copy of each switch, set by ``enable_*`` / ``disable_*`` and
  by ``load_state_dict``, so a forward never reads a device tensor on the host.
* ``calculate_qparams()`` returns ``(scale float32, zero_point int32)`` on the module's
  device without a host synchronisation.
* The keyword arguments torchao's ``prepare_qat_pt2e`` passes from a ``QuantizationSpec``
  (``dtype``, ``quant_min``, ``quant_max``, ``qscheme``, ``ch_axis``, ``is_dynamic``) are
  accepted where they agree with the module and rejected with a message where they do not.
* Floating-point state (scales, running min/max, Paddle's accumulators, learnable qparams)
  stays float32 whatever ``model.to(dtype)`` / ``.half()`` / ``.bfloat16()`` / ``.double()``
  ask for (as the ops require, and as mixed-precision users keep BatchNorm statistics);
  device moves apply as usual.
* ``init_channels(channels)`` sizes per-channel state before the first forward (the QAT
  modules call it with their channel count at construction), so that no forward resizes a
  buffer and ``torch.compile(fullgraph=True)`` traces the first step.
* Constructor arguments are validated once, with the ranges of the ops (``bits`` an integer
  in [2, 16], ``moving_rate`` in [0, 1), ``averaging_constant`` in [0, 1], ``window_size``
  an integer >= 1, ...): a bad value raises ``ValueError`` / ``TypeError`` naming it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import numbers
import sys
import warnings
from functools import partial

import torch
from torch import nn

from .. import observers as _observers
from .. import ops as _ops
from ..learnable import fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor
from ..weight_quant import FLOAT32_EPS, fake_quantize_weight_abs_max

try:  # torch.ao is being retired in favour of torchao (pytorch/ao#2259)
    from torch.ao.quantization import FakeQuantizeBase as _Base
except ImportError:  # pragma: no cover - exercised only on a torch without torch.ao
    from abc import ABC, abstractmethod

    class _PartialWrapper:
        def __init__(self, p):
            self.p = p

        def __call__(self, *args, **kwargs):
            return self.p(*args, **kwargs)

        def with_args(self, **kwargs):
            return _PartialWrapper(partial(self.p, **kwargs))

        def __repr__(self):
            return repr(self.p)

    class _Base(ABC, nn.Module):  # type: ignore[no-redef]
        """The API of torch.ao.quantization.FakeQuantizeBase, for a torch without torch.ao."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
            self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))

        @abstractmethod
        def forward(self, x):
            pass

        @abstractmethod
        def calculate_qparams(self, **kwargs):
            pass

        def enable_fake_quant(self, enabled: bool = True) -> None:
            self.fake_quant_enabled[0] = 1 if enabled else 0

        def disable_fake_quant(self):
            self.enable_fake_quant(False)

        def enable_observer(self, enabled: bool = True) -> None:
            self.observer_enabled[0] = 1 if enabled else 0

        def disable_observer(self):
            self.enable_observer(False)

        @classmethod
        def with_args(cls, **kwargs):
            return _PartialWrapper(partial(cls, **kwargs))


_SPEC_KEYS = ("dtype", "quant_min", "quant_max", "qscheme", "ch_axis", "is_dynamic", "factory_kwargs")

#: Integer range of each quantized dtype a module may report.
_DTYPE_RANGES = {
    torch.qint8: (-128, 127), torch.int8: (-128, 127),
    torch.quint8: (0, 255), torch.uint8: (0, 255),
    torch.int16: (-(2**15), 2**15 - 1), torch.uint16: (0, 2**16 - 1),
    torch.qint32: (-(2**31), 2**31 - 1), torch.int32: (-(2**31), 2**31 - 1),
}


def _signed_dtype(quant_min: int, quant_max: int) -> torch.dtype:
    return torch.qint8 if -128 <= quant_min and quant_max <= 127 else torch.qint32


def _check_dtype_range(name: str, dtype: torch.dtype, quant_min: int, quant_max: int) -> None:
    if dtype not in _DTYPE_RANGES:
        raise ValueError(f"{name}: dtype must be one of {list(_DTYPE_RANGES)}, got {dtype}")
    lo, hi = _DTYPE_RANGES[dtype]
    if not lo <= quant_min < quant_max <= hi:
        raise ValueError(f"{name}: need {lo} <= quant_min < quant_max <= {hi} for dtype {dtype}, "
                         f"got [{quant_min}, {quant_max}]")


def _channels_along(name: str, x: torch.Tensor, axis: int) -> int:
    """``x.shape[axis]``, or an error naming ``ch_axis`` and the accepted range (a host-side
    shape check)."""
    dim = x.dim()
    if not -dim <= axis < dim:
        raise IndexError(f"{name}: ch_axis={axis} is out of range for a {dim}-d input of shape {list(x.shape)}; "
                         f"accepted: [{-dim}, {dim - 1}]")
    return x.shape[axis]


def _take_spec(name: str, spec: dict, **mine) -> torch.dtype:
    """Check the QuantizationSpec-style keyword arguments against the module's own values
    (``mine``) and return the dtype to report (the spec's when it gives one that holds the
    range, else ``mine['dtype']``)."""
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword argument(s) {unknown}; besides its own arguments it "
                        f"accepts only the QuantizationSpec fields {list(_SPEC_KEYS)}")
    if spec.get("is_dynamic"):
        raise ValueError(f"{name}: is_dynamic=True is not supported (static fake quantization only)")
    for key in ("quant_min", "quant_max", "qscheme", "ch_axis"):
        if spec.get(key) is not None and key in mine and spec[key] != mine[key]:
            raise ValueError(f"{name}: {key}={spec[key]!r} disagrees with the module's {key}={mine[key]!r}")
    dtype = spec.get("dtype") or mine["dtype"]
    _check_dtype_range(name, dtype, mine["quant_min"], mine["quant_max"])
    return dtype


def _to_factory_device(module: nn.Module, spec: dict) -> None:
    """torch.ao's QAT modules pass ``factory_kwargs={"device": ..., "dtype": ...}`` to their
    weight fake quantizer: the state goes to that device (its dtypes stay float32 / int)."""
    device = (spec.get("factory_kwargs") or {}).get("device")
    if device is not None:
        module.to(device)


def _check_rounding(name: str, rounding: str) -> None:
    if rounding not in ("half_even", "half_away"):
        raise ValueError(f"{name}: rounding must be 'half_even' or 'half_away' (the observers' deterministic "
                         f"roundings), got {rounding!r}")


def _int_arg(name: str, arg: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: an integer (Python or NumPy, not bool) within ``[lo, hi]``; anything
    else (``8.7``, ``2.5``, ``True``, ``"8"``) raises instead of being truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: {arg} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"lie in [{lo}, {hi}]" if hi is not None else f"be >= {lo}"
        raise ValueError(f"{name}: {arg} must {bounds}, got {value}")
    return value


def _float_arg(name: str, arg: str, value, lo: float, hi: float, hi_open: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {arg} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    inside = lo <= value < hi if hi_open else lo <= value <= hi
    if not (math.isfinite(value) and inside):
        raise ValueError(f"{name}: {arg} must lie in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")
    return value


#: The smallest normal float32: the ops' lower bound for ``eps``.
_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


def _eps_arg(name: str, value) -> float:
    """The ops' rule for ``eps``: finite and at least the smallest normal float32 (as a float32)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: eps must be a real number, got {value!r} ({type(value).__name__})")
    as_f32 = float(torch.tensor(float(value), dtype=torch.float32))
    if not (math.isfinite(as_f32) and as_f32 >= _FLOAT32_TINY):
        raise ValueError(f"{name}: eps must be finite and >= {_FLOAT32_TINY} (the smallest normal float32) as a "
                         f"float32, got {value}")
    return float(value)


class FakeQuantizeBase(_Base):
    """Base of fakequant's fake-quantize modules: ``torch.ao.quantization.FakeQuantizeBase``
    plus host copies of the two switches (see the module docstring) and state-dict loading
    that resizes per-channel buffers to the loaded shapes, as PyTorch's ``FakeQuantize``."""

    #: dtype of the fake_quant_enabled / observer_enabled buffers.
    _flag_dtype = torch.uint8
    #: buffers / parameters (attribute paths) whose shape follows the loaded state dict.
    _resizable: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        if self._flag_dtype != torch.uint8:
            self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=self._flag_dtype))
            self.register_buffer("observer_enabled", torch.tensor([1], dtype=self._flag_dtype))
        self._fake_quant_on = True
        self._observer_on = True
        self.is_dynamic = False

    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0
        self._fake_quant_on = bool(enabled)

    def disable_fake_quant(self):
        self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled[0] = 1 if enabled else 0
        self._observer_on = bool(enabled)

    def disable_observer(self):
        self.enable_observer(False)

    def _flags_repr(self) -> str:
        return f"fake_quant_enabled={int(self._fake_quant_on)}, observer_enabled={int(self._observer_on)}"

    def init_channels(self, channels: int) -> None:
        """Size the per-channel state for ``channels`` channels now rather than on the first
        forward (a no-op for per-tensor quantizers)."""

    def _apply(self, fn, recurse=True):
        # The state keeps its dtype (float32 for the ops, ints for counters and switches) through
        # model.to(dtype) / .half() / .bfloat16() / .double(); only the device follows ``fn``.
        # The original tensor is moved, never the converted one, so no value is rounded.
        def keep_dtype(t):
            moved = fn(t)
            if isinstance(moved, torch.Tensor) and moved.dtype != t.dtype:
                return t.data.to(moved.device)
            return moved

        return super()._apply(keep_dtype, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self._resizable:
            key = prefix + name
            if key in state_dict:
                t = getattr(self, name)
                if t.shape != state_dict[key].shape:
                    with torch.no_grad():
                        if isinstance(t, nn.Parameter):
                            t.data = t.data.new_empty(state_dict[key].shape)
                        else:
                            t.resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # The switches' host copies (read once here, at load time).
        self._fake_quant_on = bool(self.fake_quant_enabled[0].item())
        self._observer_on = bool(self.observer_enabled[0].item())


# ---------------------------------------------------------------------------------------
# Paddle's activation observers


#: Paddle's initial OutScale (and the scale an unobserved Paddle quantizer quantizes with).
_PADDLE_INITIAL_SCALE = 0.001


class _PaddleAbsMaxFakeQuantize(FakeQuantizeBase):
    """Common part of the Paddle abs-max activation quantizers: symmetric, zero point 0,
    ``[-bin_cnt, bin_cnt]`` with ``bin_cnt = 2**(bits-1) - 1``; ``scale`` holds the abs-max
    (Paddle's ``OutScale``), the quantization step is ``scale / bin_cnt``.

    Observation: in training with the observer on, every batch updates the state. A quantizer
    that has never observed a batch (fresh from its constructor; a loaded state dict whose
    state differs from the initial values counts as observed) also observes its first batch
    in eval mode, so that evaluating a model right after ``quant_aware`` / ``prepare_qat``
    quantizes with a scale from the data instead of Paddle's initial 0.001; later eval
    batches use the stored scale and change nothing. With the observer disabled an
    unobserved quantizer keeps the initial scale and warns once."""

    def __init__(self, bits: int, rounding: str, ahead_relu: bool, spec: dict) -> None:
        super().__init__()
        name = type(self).__name__
        bits = _int_arg(name, "bits", bits, 2, 16)
        _check_rounding(name, rounding)
        self.bits = bits
        self.bin_cnt = 2 ** (self.bits - 1) - 1
        self.quant_min, self.quant_max = -self.bin_cnt, self.bin_cnt
        self.qscheme = torch.per_tensor_symmetric
        self.ch_axis = -1
        self.is_per_channel = False
        self.rounding = rounding
        self.ahead_relu = bool(ahead_relu)
        self.dtype = _take_spec(name, spec, dtype=_signed_dtype(self.quant_min, self.quant_max),
                                quant_min=self.quant_min, quant_max=self.quant_max,
                                qscheme=self.qscheme)
        # Paddle's initial OutScale.
        self.register_buffer("scale", torch.tensor([_PADDLE_INITIAL_SCALE], dtype=torch.float32))
        # Host flag: has the state seen a batch (no device read in forward).
        self._observed = False
        self._warned_unobserved = False

    def _call(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        raise NotImplementedError

    def _state_is_initial(self) -> bool:
        """Whether the state holds the constructor's values (read on the host, at load time)."""
        raise NotImplementedError

    def _start_calibration(self) -> None:
        """Before an unobserved quantizer's first observation in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ahead_relu:
            x = torch.relu(x)
        # An unobserved quantizer observes its first batch in eval too (class docstring).
        observe = self._observer_on and (self.training or not self._observed)
        if not observe and not self._observed and self._fake_quant_on and not self._warned_unobserved:
            self._warned_unobserved = True
            warnings.warn(f"{type(self).__name__} has never observed a batch and its observer is disabled: it "
                          f"quantizes with its initial scale {_PADDLE_INITIAL_SCALE}", stacklevel=2)
        if observe and not self._observed:
            if not self.training:
                self._start_calibration()
            self._observed = True
        if not self._fake_quant_on:
            if observe:
                self._call(x.detach(), True)  # statistics only; the output is x
            return x
        return self._call(x, observe)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._observed = not self._state_is_initial()

    @torch.no_grad()
    def calculate_qparams(self):
        """``(scale / bin_cnt, 0)``: the step the op quantizes with (a zero abs-max gives the
        smallest normal float, as the op does)."""
        step = torch.clamp(self.scale / self.bin_cnt, min=torch.finfo(torch.float32).tiny)
        return step, torch.zeros_like(self.scale, dtype=torch.int32)

    def _common_repr(self) -> str:
        return (f"{self._flags_repr()}, bits={self.bits}, quant_min={self.quant_min}, quant_max={self.quant_max}, "
                f"dtype={self.dtype}, qscheme={self.qscheme}, ch_axis={self.ch_axis}, rounding={self.rounding!r}, "
                f"ahead_relu={self.ahead_relu}")


class MovingAverageAbsMaxFakeQuantize(_PaddleAbsMaxFakeQuantize):
    """Paddle's ``moving_average_abs_max`` activation quantizer
    (``fakequant.fake_quantize_moving_average_abs_max``, one fused op per step).

    When observing (training with the observer on, or the first batch of an unobserved
    quantizer, see below): ``state = r*state + 1; accum = r*accum + max|x|;
    scale = accum / state`` and x is quantized with the new scale. Otherwise (eval, or
    observer off) the stored scale is used and nothing changes. Buffers ``scale``,
    ``state``, ``accum`` (float32 ``[1]``) start at Paddle's initial values 0.001, 1, 1.
    ``moving_rate`` lies in [0, 1) (the op's range). ``ahead_relu=True`` observes and
    quantizes ``relu(x)`` (docs/qat.md).

    A quantizer that has never observed a batch observes its first batch even in eval mode
    (so evaluating right after ``quant_aware`` uses a scale from the data, not 0.001), as a
    calibration: its accumulators start empty (``state = 0, accum = 0`` before the update), so
    the scale is that batch's ``max|x|`` rather than Paddle's first-step mixture
    ``(r + max|x|) / (r + 1)``. Loading a state dict whose ``scale``, ``state``, ``accum``
    differ from 0.001, 1, 1 marks it observed.
    """

    def __init__(self, bits: int = 8, moving_rate: float = 0.9, rounding: str = "half_away",
                 ahead_relu: bool = False, **spec) -> None:
        super().__init__(bits, rounding, ahead_relu, spec)
        self.moving_rate = _float_arg(type(self).__name__, "moving_rate", moving_rate, 0.0, 1.0, hi_open=True)
        self.register_buffer("state", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("accum", torch.tensor([1.0], dtype=torch.float32))
        _to_factory_device(self, spec)

    @torch.no_grad()
    def _start_calibration(self) -> None:
        # Paddle's initial accumulators (1, 1) would mix 1 into the first scale,
        # (r + max|x|) / (r + 1); a calibration batch starts them empty: scale = max|x|.
        self.state.zero_()
        self.accum.zero_()

    def _state_is_initial(self) -> bool:
        initial = torch.tensor([_PADDLE_INITIAL_SCALE, 1.0, 1.0], dtype=torch.float32)
        return bool(torch.equal(torch.cat([self.scale, self.state, self.accum]).cpu(), initial))

    def _call(self, x, training):
        return _observers.fake_quantize_moving_average_abs_max(x, self.scale, self.state, self.accum,
                                                               self.moving_rate, self.bits, training, self.rounding)

    def extra_repr(self) -> str:
        return f"{self._common_repr()}, moving_rate={self.moving_rate}, scale={self.scale}"


class RangeAbsMaxFakeQuantize(_PaddleAbsMaxFakeQuantize):
    """Paddle's ``range_abs_max`` activation quantizer (``fakequant.fake_quantize_range_abs_max``):
    the scale is the largest ``max|x|`` of the last ``window_size`` training steps, kept on
    the device (``window`` float32 ``[window_size]``, ``iter`` int64 ``[1]``, ``scale``
    float32 ``[1]`` starting at Paddle's 0.001). Eval / observer off: the stored scale.
    ``window_size`` is an integer >= 1. A quantizer that has never observed a batch
    (``iter == 0``) observes its first batch even in eval mode, as
    :class:`MovingAverageAbsMaxFakeQuantize` does."""

    def __init__(self, bits: int = 8, window_size: int = 10000, rounding: str = "half_away",
                 ahead_relu: bool = False, **spec) -> None:
        super().__init__(bits, rounding, ahead_relu, spec)
        self.window_size = _int_arg(type(self).__name__, "window_size", window_size, 1)
        self.register_buffer("window", torch.zeros(self.window_size, dtype=torch.float32))
        self.register_buffer("iter", torch.zeros(1, dtype=torch.int64))
        _to_factory_device(self, spec)

    def _call(self, x, training):
        return _observers.fake_quantize_range_abs_max(x, self.scale, self.window, self.iter, self.bits, training,
                                                      self.rounding)

    def _state_is_initial(self) -> bool:
        return int(self.iter.reshape(-1)[0]) == 0

    def extra_repr(self) -> str:
        return f"{self._common_repr()}, window_size={self.window_size}, scale={self.scale}"


# ---------------------------------------------------------------------------------------
# PyTorch's moving-average min/max observer


_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)
_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


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
        return _observers.fused_moving_avg_obs_fake_quant(
            x, self.observer_enabled, self.fake_quant_enabled, st.min_val, st.max_val, self.scale, self.zero_point,
            self.averaging_constant, self.quant_min, self.quant_max, axis, self.is_symmetric_quant, False,
            self.rounding)

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


# ---------------------------------------------------------------------------------------
# Learnable scale / zero point


def _qparams_from_min_max(min_val, max_val, quant_min, quant_max, symmetric, eps):
    """torch.ao's ``UniformQuantizationObserverBase._calculate_qparams`` (affine and
    symmetric), on the device: scale float32, zero point float32 (integral values)."""
    zero = torch.zeros_like(min_val)
    min_neg = torch.min(min_val, zero)
    max_pos = torch.max(max_val, zero)
    if symmetric:
        scale = torch.max(torch.max(-min_neg, max_pos) / (float(quant_max - quant_min) / 2), eps)
        zero_point = torch.zeros_like(scale)  # the forward zeroes a symmetric zero point anyway
    else:
        scale = torch.max((max_pos - min_neg) / float(quant_max - quant_min), eps)
        zero_point = torch.clamp(quant_min - torch.round(min_neg / scale).to(torch.int), quant_min, quant_max).float()
    return scale, zero_point


class LearnableFakeQuantize(FakeQuantizeBase):
    """LSQ / LSQ+ fake quantization with learnable ``scale`` and ``zero_point``
    (``nn.Parameter``, float32), over ``fakequant.fake_quantize_learnable_per_{tensor,channel}``:
    the values and gradients of ``torch.ao.quantization._LearnableFakeQuantize`` with
    parameter learning on.

    Per tensor (``qscheme`` per_tensor_*) or per channel along ``ch_axis``. Symmetric schemes
    keep the zero point at 0; every forward clamps the scale to at least ``eps`` (both as
    PyTorch's module). ``use_grad_scaling`` multiplies the qparam gradients by
    ``1 / sqrt(numel * quant_max)``.

    ``init_from_observer=True``: the first forward with the observer enabled sets the scale
    and zero point from that batch's min/max with torch.ao's MinMaxObserver formula (what
    PyTorch's flow does with one static-estimate step before ``enable_param_learning``) and
    sets the ``initialized`` buffer; later forwards only learn. A per-channel module sizes
    its parameters ``[C]`` on its first input (filled with the constructor values when not
    initialised from the batch), keeping the Parameter objects, so an optimizer built
    before that first forward still holds them. Clearing ``initialized`` (``reset_qparams``)
    re-initialises from the next observed batch.
    """

    _resizable = ("scale", "zero_point")

    def __init__(self, quant_min: int = 0, quant_max: int = 255, dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_tensor_affine, ch_axis: int = 0, scale: float = 1.0,
                 zero_point: float = 0.0, use_grad_scaling: bool = False, init_from_observer: bool = True,
                 **spec) -> None:
        super().__init__()
        name = type(self).__name__
        if qscheme not in _PER_CHANNEL + _PER_TENSOR:
            raise ValueError(f"{name}: qscheme must be one of {list(_PER_TENSOR + _PER_CHANNEL)}, got {qscheme}")
        quant_min, quant_max = _int_arg(name, "quant_min", quant_min), _int_arg(name, "quant_max", quant_max)
        ch_axis = _int_arg(name, "ch_axis", ch_axis)
        f32_max = float(torch.finfo(torch.float32).max)
        scale = _float_arg(name, "scale", scale, _FLOAT32_TINY, f32_max)
        zero_point = _float_arg(name, "zero_point", zero_point, -f32_max, f32_max)
        if not quant_min < quant_max:
            raise ValueError(f"{name}: quant_min must be strictly less than quant_max, got [{quant_min}, {quant_max}]")
        _check_dtype_range(name, dtype, quant_min, quant_max)
        spec_ch_axis = spec.get("ch_axis")
        _take_spec(name, spec, dtype=dtype, quant_min=quant_min, quant_max=quant_max, qscheme=qscheme,
                   ch_axis=ch_axis if spec_ch_axis is None else spec_ch_axis)
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        self.dtype = dtype
        self.qscheme = qscheme
        self.is_per_channel = qscheme in _PER_CHANNEL
        self.is_symmetric_quant = qscheme in _SYMMETRIC
        self.ch_axis = int(ch_axis) if self.is_per_channel else -1
        self.use_grad_scaling = bool(use_grad_scaling)
        self.init_from_observer = bool(init_from_observer)
        self._init_scale, self._init_zero_point = float(scale), float(zero_point)
        self.scale = nn.Parameter(torch.tensor([scale], dtype=torch.float32))
        self.zero_point = nn.Parameter(torch.tensor([zero_point], dtype=torch.float32))
        self.register_buffer("eps", torch.tensor([FLOAT32_EPS], dtype=torch.float32))
        self.register_buffer("initialized", torch.tensor([0], dtype=torch.uint8))
        self._initialized = False
        self._sized = not self.is_per_channel
        _to_factory_device(self, spec)

    def reset_qparams(self) -> None:
        """Initialise the scale / zero point again from the next observed batch."""
        self.initialized.zero_()
        self._initialized = False

    def init_channels(self, channels: int) -> None:
        """Size the per-channel ``scale`` / ``zero_point`` for ``channels`` channels (filled with
        the constructor values) before the first forward, keeping the Parameter objects; a
        no-op per tensor."""
        if self.is_per_channel:
            self._size_channels(_int_arg(type(self).__name__, "channels", channels, 1))

    @torch.no_grad()
    def _size_channels(self, channels: int) -> None:
        if self.scale.numel() != channels:
            self.scale.data = torch.full((channels,), self._init_scale, dtype=torch.float32, device=self.scale.device)
            self.zero_point.data = torch.full((channels,), self._init_zero_point, dtype=torch.float32,
                                              device=self.zero_point.device)
        self._sized = True

    @torch.no_grad()
    def _init_from_batch(self, x: torch.Tensor) -> None:
        mn, mx = _ops_min_max(x.detach(), self.ch_axis if self.is_per_channel else None)
        scale, zero_point = _qparams_from_min_max(mn.reshape(-1), mx.reshape(-1), self.quant_min, self.quant_max,
                                                  self.is_symmetric_quant, self.eps)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.initialized.fill_(1)
        self._initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._sized:
            self._size_channels(_channels_along(type(self).__name__, x, self.ch_axis))
        if self.init_from_observer and self._observer_on and not self._initialized and x.numel() > 0:
            self._init_from_batch(x)
        else:
            with torch.no_grad():
                self.scale.clamp_(min=FLOAT32_EPS)
        if not self._fake_quant_on:
            return x
        if self.is_symmetric_quant:
            with torch.no_grad():
                self.zero_point.zero_()
        grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
        if self.is_per_channel:
            return fake_quantize_learnable_per_channel(x, self.scale, self.zero_point, self.ch_axis, self.quant_min,
                                                       self.quant_max, grad_factor)
        return fake_quantize_learnable_per_tensor(x, self.scale, self.zero_point, self.quant_min, self.quant_max,
                                                  grad_factor)

    @torch.no_grad()
    def calculate_qparams(self):
        """``(max(scale, eps), clamp(round(zero_point), quant_min, quant_max))`` as float32 /
        int32 (PyTorch's module returns an int64 zero point)."""
        scale = torch.clamp(self.scale.detach(), min=FLOAT32_EPS)
        zero_point = self.zero_point.detach().round().clamp(self.quant_min, self.quant_max).to(torch.int32)
        if self.is_symmetric_quant:
            zero_point = torch.zeros_like(zero_point)
        return scale, zero_point

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._initialized = bool(self.initialized[0].item())
        if self.is_per_channel and prefix + "scale" in state_dict:
            self._sized = True

    def extra_repr(self) -> str:
        return (f"{self._flags_repr()}, quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
                f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, use_grad_scaling={self.use_grad_scaling}, "
                f"init_from_observer={self.init_from_observer}, initialized={self._initialized}")


def _ops_min_max(x: torch.Tensor, axis: int | None):
    return _observers.min_max(x, axis)


# ---------------------------------------------------------------------------------------
# Weights


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
        with torch.no_grad():
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(scale.shape).zero_()
            self.scale.copy_(scale)

    def _per_tensor_scale(self, w: torch.Tensor) -> torch.Tensor:
        amax = _observers.abs_max(w.detach()).reshape(1)
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
            self._store_scale(self._per_tensor_scale(w))
        if not self._fake_quant_on:
            return w
        if self.is_per_channel:
            return _ops.fake_quantize_per_channel(w, self.scale, self.zero_point, self.ch_axis, self.quant_min,
                                                  self.quant_max, self.rounding)
        return _ops.fake_quantize_per_tensor(w, self.scale, self.zero_point, self.quant_min, self.quant_max,
                                             self.rounding)

    @torch.no_grad()
    def calculate_qparams(self):
        """The last scales (float32) and zero points (int32 zeros)."""
        return self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return (f"{self._flags_repr()}, quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
                f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, rounding={self.rounding!r}, eps={self.eps}, "
                f"scale={self.scale}")


# ---------------------------------------------------------------------------------------
# torchao


_CLASSES = (FakeQuantizeBase,)
_TORCHAO_MODULE = "torchao.quantization.pt2e.fake_quantize"


def register_with_torchao() -> bool:
    """Register :class:`FakeQuantizeBase` (so every class here) as a virtual subclass of
    torchao's ``FakeQuantizeBase`` (``ABCMeta.register``), which is what torchao's
    ``_is_activation_post_process`` checks. Done automatically when torchao is (or later
    gets) imported; returns False when torchao is not installed."""
    module = sys.modules.get(_TORCHAO_MODULE)
    if module is None:
        if importlib.util.find_spec("torchao") is None:
            return False
        module = importlib.import_module(_TORCHAO_MODULE)
    for cls in _CLASSES:
        if not issubclass(cls, module.FakeQuantizeBase):
            module.FakeQuantizeBase.register(cls)
    return True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers our classes with torchao right after torchao's fake_quantize module is
    imported, so that ``import fakequant`` does not have to import torchao (slow) itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TORCHAO_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                exec_module = loader.exec_module

                class _Loader(importlib.abc.Loader):
                    def create_module(self, spec):
                        return loader.create_module(spec)

                    def exec_module(self, module):
                        exec_module(module)
                        for cls in _CLASSES:
                            module.FakeQuantizeBase.register(cls)

                spec.loader = _Loader()
                return spec
        return None


if _TORCHAO_MODULE in sys.modules:
    register_with_torchao()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
