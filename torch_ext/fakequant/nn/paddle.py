"""Paddle's activation quantizers: ``MovingAverageAbsMaxFakeQuantize`` and
``RangeAbsMaxFakeQuantize`` (the fused ``moving_average_abs_max`` / ``range_abs_max`` observers)."""

from __future__ import annotations

import warnings

import torch

from .. import distributed as _distributed
from .. import export as _export
from .. import ops as _ops
from .base import (
    FakeQuantizeBase,
    _check_rounding,
    _float_arg,
    _int_arg,
    _signed_dtype,
    _take_spec,
    _to_factory_device,
)


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

    # Observes its input: fakequant.distributed.sync_observers combines the statistic across ranks.
    _synchronisable = True

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
        if not observe and self._fake_quant_on and _export.exporting():
            # Being exported for inference: the same values from the non-mutating per-tensor op
            # (the step the op uses, zero point 0), so exported graphs carry no in-place update.
            step = torch.clamp(self.scale / self.bin_cnt, min=torch.finfo(torch.float32).tiny)
            return _ops.fake_quantize_per_tensor(x, step, torch.zeros_like(self.scale, dtype=torch.int32),
                                                 self.quant_min, self.quant_max, self.rounding)
        if observe and _export.onnx_exporting():
            raise _export.observing_error(self)
        if not observe and not self._observed and self._fake_quant_on and not self._warned_unobserved:
            self._warned_unobserved = True
            warnings.warn(f"{type(self).__name__} has never observed a batch and its observer is disabled: it "
                          f"quantizes with its initial scale {_PADDLE_INITIAL_SCALE}", stacklevel=2)
        if observe and not self._observed:
            if not self.training:
                self._start_calibration()
            self._observed = True
        group = _distributed.per_batch_group(self) if observe else None
        if group is not None:
            # The batch's abs-max combined across the group updates the state through the op itself
            # (over a tensor holding just it); the input is then quantized with the updated scale.
            amax = _distributed.global_abs_max(_ops.abs_max(x.detach()), group)
            self._call(amax.reshape(1), True)
            observe = False
        if not self._fake_quant_on:
            if observe:
                self._call(x.detach(), True)  # statistics only; the output is x
            return x
        return self._call(x, observe)

    #: The state buffers (the subclass's).
    _STATE = ()

    def _bucket_states(self):
        """fakequant.distributed's bucketed mode: the state tensors, each the group's maximum (each
        grows with the batch's abs-max, or is equal on every rank)."""
        return [(getattr(self, name), 1) for name in self._STATE]

    def _after_bucket(self) -> None:
        pass

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

    _STATE = ("scale", "state", "accum")

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
        return _ops.fake_quantize_moving_average_abs_max(x, self.scale, self.state, self.accum,
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

    _STATE = ("scale", "window", "iter")

    def _call(self, x, training):
        return _ops.fake_quantize_range_abs_max(x, self.scale, self.window, self.iter, self.bits, training,
                                                      self.rounding)

    def _state_is_initial(self) -> bool:
        return int(self.iter.reshape(-1)[0]) == 0

    def extra_repr(self) -> str:
        return f"{self._common_repr()}, window_size={self.window_size}, scale={self.scale}"
