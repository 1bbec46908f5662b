"""The base class of fakequant's fake quantizers and the argument checks they share
(docs/qat.md, "Common API and decisions").

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

import math
import numbers
from functools import partial

import torch
from torch import nn


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


#: The qschemes, by kind.
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)
_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)
