"""Fake quantizers for the block-scaled formats LLM QAT trains for, and the one-call swap of a
model's Linear / Embedding layers to QAT layers that use them (docs/llm-qat.md).

Every quantizer here is dynamic, as torchao's QAT quantizers for these formats are: the scales
come from the tensor of each call (per token, per group, per block), so there is no observer
state to freeze: ``disable_observer()`` changes nothing for them (the torch.ao QAT recipe calls
it; it is accepted, and documented here rather than refused), while ``disable_fake_quant()``
makes them the identity. ``calculate_qparams()`` returns the scales (and zero points) of the
last call. Each one is a :class:`fakequant.nn.FakeQuantizeBase`, so it fits any qconfig slot of
:mod:`fakequant.nn.qat` (``Linear(..., qconfig=QConfig(activation, weight))``), and the gradient
is the clipped straight-through estimator on the op's 1-bit mask.

:func:`prepare_llm_qat` / :func:`convert_llm_qat` swap the layers of a model for a named scheme
without torchao; with torchao, its own ``QATConfig`` flow plus
:func:`fakequant.nn.fuse_torchao_fake_quantizers` gives the same values."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .. import ops as _ops
from .base import FakeQuantizeBase, _int_arg
from .qat import Embedding, Linear, QConfig

__all__ = [
    "Float8FakeQuantize",
    "LLM_QAT_SCHEMES",
    "MXFakeQuantize",
    "NVFP4FakeQuantize",
    "PerGroupFakeQuantize",
    "PerTokenFakeQuantize",
    "convert_llm_qat",
    "llm_qat_qconfig",
    "prepare_llm_qat",
]


_ROUNDINGS = ("half_even", "half_away", "stochastic")


class _DynamicBlockFakeQuantize(FakeQuantizeBase):
    """Common part: the switches and the last call's qparams (stochastic rounding draws its seed
    from the default generator on each call, on the device)."""

    def __init__(self, rounding: str = "half_even") -> None:
        super().__init__()
        if rounding not in _ROUNDINGS:
            raise ValueError(f"{type(self).__name__}: rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding
        self.is_dynamic = True
        self.last_scale: torch.Tensor | None = None
        self.last_zero_point: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fake_quant_on:
            return x
        y, scale, zero_point = self._quantize(x)
        self.last_scale, self.last_zero_point = scale.detach(), (
            zero_point.detach() if zero_point is not None else None)
        return y

    def calculate_qparams(self, **kwargs):
        """The scales and zero points (zeros where the format has none) of the last call."""
        if self.last_scale is None:
            raise RuntimeError(f"{type(self).__name__}: no qparams yet: they are computed by a forward call")
        zp = self.last_zero_point
        return self.last_scale, zp if zp is not None else torch.zeros_like(self.last_scale, dtype=torch.int32)

    def extra_repr(self) -> str:
        return f"{self._args_repr()}, {self._flags_repr()}"


class PerTokenFakeQuantize(_DynamicBlockFakeQuantize):
    """Dynamic asymmetric int8 per token (a row of the last dim): torchao's
    ``IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)``, the activation half
    of 8da4w, through :func:`fakequant.fake_quantize_per_token`."""

    def __init__(self, quant_min: int = -128, quant_max: int = 127, eps: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.quant_min, self.quant_max = _int_arg(name, "quant_min", quant_min), _int_arg(name, "quant_max", quant_max)
        self.eps = eps

    def _quantize(self, x):
        return _ops.fake_quantize_per_token(x, self.quant_min, self.quant_max, eps=self.eps)

    def _args_repr(self):
        return f"quant_min={self.quant_min}, quant_max={self.quant_max}"


class PerGroupFakeQuantize(_DynamicBlockFakeQuantize):
    """Int weights with a scale per group of ``group_size`` elements along the last dim:
    symmetric (torchao's ``get_group_qparams_symmetric``, the weight half of 8da4w and int4
    weight-only, :func:`fakequant.fake_quantize_per_group`) or asymmetric (torchao's per-group
    asymmetric qparams, :func:`fakequant.fake_quantize_per_group_affine`)."""

    def __init__(self, group_size: int = 32, bits: int = 4, symmetric: bool = True, eps: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.group_size = _int_arg(name, "group_size", group_size, 1)
        self.bits = _int_arg(name, "bits", bits, 2, 8)
        self.symmetric = bool(symmetric)
        self.eps = eps
        self.quant_min, self.quant_max = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def _quantize(self, x):
        if self.symmetric:
            y, scale = _ops.fake_quantize_per_group(x, self.group_size, self.quant_min, self.quant_max, eps=self.eps)
            return y, scale, None
        return _ops.fake_quantize_per_group_affine(x, self.group_size, self.quant_min, self.quant_max, eps=self.eps)

    def _args_repr(self):
        return f"group_size={self.group_size}, bits={self.bits}, symmetric={self.symmetric}"


class Float8FakeQuantize(_DynamicBlockFakeQuantize):
    """FP8 (E4M3 or E5M2) scaled per tensor, per row or per 128 x 128 block:
    :func:`fakequant.fake_quantize_fp8` (``profile="torchao"`` is torchao's
    ``Float8FakeQuantizeConfig``)."""

    def __init__(self, dtype: str = "e4m3", granularity: str = "row", profile: str = "torchao",
                 amax_bounds: tuple[float, float] | None = None, rounding: str = "half_even") -> None:
        super().__init__(rounding)
        self.dtype, self.granularity, self.profile, self.amax_bounds = dtype, granularity, profile, amax_bounds

    def _quantize(self, x):
        y, scale = _ops.fake_quantize_fp8(x, self.dtype, granularity=self.granularity, profile=self.profile,
                                          amax_bounds=self.amax_bounds, rounding=self.rounding)
        return y, scale, None

    def _args_repr(self):
        return f"dtype={self.dtype!r}, granularity={self.granularity!r}, profile={self.profile!r}"


class MXFakeQuantize(_DynamicBlockFakeQuantize):
    """OCP MX: ``dtype`` elements (``"e4m3"``, ``"e5m2"``, ``"e3m2"``, ``"e2m3"``, ``"e2m1"``) in
    blocks of ``block_size`` along the last dim with E8M0 scales: :func:`fakequant.fake_quantize_mx`
    (torchao's ``MXFakeQuantizeConfig`` defaults: E2M1, 32, ``"rceil"``)."""

    def __init__(self, dtype: str = "e2m1", block_size: int = 32, scale_mode: str = "rceil",
                 rounding: str = "half_even") -> None:
        super().__init__(rounding)
        self.dtype, self.scale_mode = dtype, scale_mode
        self.block_size = _int_arg(type(self).__name__, "block_size", block_size, 1)

    def _quantize(self, x):
        y, scale = _ops.fake_quantize_mx(x, self.dtype, self.block_size, self.scale_mode, rounding=self.rounding)
        return y, scale, None

    def _args_repr(self):
        return f"dtype={self.dtype!r}, block_size={self.block_size}, scale_mode={self.scale_mode!r}"


class NVFP4FakeQuantize(_DynamicBlockFakeQuantize):
    """NVFP4: E2M1 elements in 1 x 16 blocks (or 16 x 16 tiles) with E4M3 block scales under a
    float32 tensor scale: :func:`fakequant.fake_quantize_nvfp4` (torchao's
    ``NVFP4FakeQuantizeConfig`` with ``profile="torchao"``)."""

    def __init__(self, per_tensor_scale: bool = True, tile: tuple[int, int] = (1, 16), profile: str = "torchao",
                 rounding: str = "half_even") -> None:
        super().__init__(rounding)
        self.per_tensor_scale, self.tile, self.profile = bool(per_tensor_scale), tuple(tile), profile

    def _quantize(self, x):
        y, block_scale, _ = _ops.fake_quantize_nvfp4(x, self.per_tensor_scale, tile=self.tile, profile=self.profile,
                                                     rounding=self.rounding)
        return y, block_scale, None

    def _args_repr(self):
        return f"per_tensor_scale={self.per_tensor_scale}, tile={self.tile}, profile={self.profile!r}"


# ---------------------------------------------------------------------------------------
# Schemes and the swap of a model's layers

#: scheme -> (activation quantizer or None, weight quantizer), as torchao names its configs.
LLM_QAT_SCHEMES = {
    "8da4w": (PerTokenFakeQuantize, partial(PerGroupFakeQuantize, group_size=32, bits=4)),
    "int4_weight_only": (None, partial(PerGroupFakeQuantize, group_size=128, bits=4)),
    "int8_weight_only": (None, partial(PerGroupFakeQuantize, group_size=128, bits=8)),
    "fp8": (partial(Float8FakeQuantize, granularity="row"), partial(Float8FakeQuantize, granularity="row")),
    "mxfp8": (partial(MXFakeQuantize, dtype="e4m3"), partial(MXFakeQuantize, dtype="e4m3")),
    "mxfp6": (partial(MXFakeQuantize, dtype="e3m2"), partial(MXFakeQuantize, dtype="e3m2")),
    "mxfp4": (MXFakeQuantize, MXFakeQuantize),
    "nvfp4": (NVFP4FakeQuantize, NVFP4FakeQuantize),
}


def _identity():
    return None


def llm_qat_qconfig(scheme: str, **weight_kwargs) -> QConfig:
    """The ``(activation, weight)`` constructors of ``scheme`` (a key of :data:`LLM_QAT_SCHEMES`);
    ``weight_kwargs`` override the weight quantizer's arguments (e.g. ``group_size=64``)."""
    if scheme not in LLM_QAT_SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(LLM_QAT_SCHEMES)}, got {scheme!r}")
    activation, weight = LLM_QAT_SCHEMES[scheme]
    return QConfig(activation=activation if activation is not None else _identity,
                   weight=partial(weight, **weight_kwargs) if weight_kwargs else weight)


def prepare_llm_qat(model: nn.Module, scheme: str, embeddings: bool = False, skip=(), **weight_kwargs) -> nn.Module:
    """Swap, in place, every ``nn.Linear`` of ``model`` (and every ``nn.Embedding`` when
    ``embeddings``; their weights only) for :class:`fakequant.nn.qat.Linear` /
    :class:`fakequant.nn.qat.Embedding` with ``scheme``'s quantizers: the weight through the
    weight quantizer, the Linear's input through the activation quantizer (none for weight-only
    schemes). Layers whose qualified name is in ``skip`` (e.g. ``"lm_head"``) stay float. The
    parameters are shared with the float layers, as ``from_float`` does. Returns ``model``."""
    qconfig = llm_qat_qconfig(scheme, **weight_kwargs)
    skip = set(skip)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if full in skip:
                continue
            if type(child) is nn.Linear:
                child.qconfig = qconfig
                new = Linear.from_float(child)
                new.input_fake_quant = qconfig.activation()
            elif embeddings and type(child) is nn.Embedding:
                child.qconfig = qconfig
                new = Embedding.from_float(child)
            else:
                continue
            new.train(child.training)
            setattr(parent, name, new)
    return model


def convert_llm_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_llm_qat` in place: every fakequant QAT Linear / Embedding becomes the
    float layer with the trained weights (the form torchao's quantize_ and other deployment
    converters take). Returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (Linear, Embedding):
                setattr(parent, name, child.to_float())
    return model
