"""The learnable scale / zero point quantizer (LSQ / LSQ+): ``LearnableFakeQuantize``."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as _distributed
from .. import ops as _ops
from ..ops import FLOAT32_EPS, fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor
from .base import (
    FakeQuantizeBase,
    _FLOAT32_TINY,
    _PER_CHANNEL,
    _PER_TENSOR,
    _SYMMETRIC,
    _channels_along,
    _check_dtype_range,
    _float_arg,
    _int_arg,
    _take_spec,
    _to_factory_device,
)


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

    # Observes its input: fakequant.distributed.sync_observers combines the statistic across ranks.
    _synchronisable = True

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
        group = _distributed.synchronised_group(self)
        if group is not None:  # every rank starts from the whole batch's range (fakequant.distributed)
            mn, mx = _distributed.global_min_max(mn, mx, group)
            if not bool(torch.isfinite(mn).all() and torch.isfinite(mx).all()):
                return  # every rank's batch empty (or a NaN / inf somewhere): initialise on a later one
        scale, zero_point = _qparams_from_min_max(mn.reshape(-1), mx.reshape(-1), self.quant_min, self.quant_max,
                                                  self.is_symmetric_quant, self.eps)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.initialized.fill_(1)
        self._initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._sized:
            self._size_channels(_channels_along(type(self).__name__, x, self.ch_axis))
        # Synchronised, a rank with an empty batch still joins the collective of the others.
        may_init = x.numel() > 0 or _distributed.synchronised_group(self) is not None
        if self.init_from_observer and self._observer_on and not self._initialized and may_init:
            self._init_from_batch(x)
        else:
            with torch.no_grad():
                self.scale.clamp_(min=FLOAT32_EPS)
        if not self._fake_quant_on:
            return x
        if self.is_symmetric_quant:
            with torch.no_grad():
                self.zero_point.zero_()
        numel = x.numel()
        group = _distributed.synchronised_group(self) if self.use_grad_scaling else None
        if group is not None:
            # LSQ's 1 / sqrt(N * Q) over the whole batch, as one process would compute it: the ranks'
            # gradients are averaged, each over its own shard of (equal) size numel.
            numel *= torch.distributed.get_world_size(group)
        grad_factor = 1.0 / (numel * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
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
    return _ops.min_max(x, axis)
