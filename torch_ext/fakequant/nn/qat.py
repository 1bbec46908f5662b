"""QAT modules that drop into PyTorch's eager QAT flow.

``Conv1d``, ``Conv2d``, ``Conv3d``, ``Linear``, ``Embedding``, ``EmbeddingBag`` (as
``torch.ao.nn.qat``), ``ConvBn1d/2d/3d``, ``ConvBnReLU1d/2d/3d``, ``ConvReLU1d/2d/3d`` and
``LinearReLU`` (as ``torch.ao.nn.intrinsic.qat``) take torch.ao's constructor arguments (plus
optional keyword-only extras), keep the same parameter and buffer names (state dicts are
interchangeable), and have ``from_float`` and ``to_float``; the ConvBn modules also
``freeze_bn_stats`` and ``update_bn_stats``. ``ConvTranspose1d`` / ``ConvTranspose2d`` (no
torch.ao QAT counterpart) take ``nn.ConvTranspose*``'s arguments plus ``qconfig``. They do not
import ``torch.ao``: they work where it has been removed, and an existing ``prepare_qat`` flow
switches to them with ``mapping=get_qat_module_mappings()``.

Every module sizes the per-channel state of its weight fake-quantizer when it is built (the
channel count is known from the layer), so no forward resizes a buffer and
``torch.compile(fullgraph=True)`` traces the first step.

``ConvBn2d`` / ``ConvBnReLU2d`` run the fused ConvBN op (:func:`fakequant.conv_bn_fake_quant`)
when their weight fake-quantizer is :class:`fakequant.nn.AbsMaxWeightFakeQuantize` per output
channel (the default of :func:`fakequant.qconfig.get_qat_qconfig`) with its observer enabled,
and store the scales the op quantized the fold with in that quantizer (so that
``disable_observer`` and ``convert`` use them); with any other weight fake-quantizer, with the
observer disabled, and in 1-d / 3-d, they run the same math composed from PyTorch ops.
``fold_mode`` picks how BN folds into the weight during training (docs/convbn.md):
``"running"`` (the default, the values of ``torch.ao.nn.intrinsic.qat.ConvBn2d``) or ``"batch"``
(forward fused with the batch statistics, backward unfused; the default of
:func:`fakequant.quant_aware`). The folded BN keeps its parameters and statistics in float32
whatever the module's dtype (``model.to(torch.bfloat16)`` trains). Under torch.distributed the
batch statistics are each process's own, or the whole group's after
``fakequant.distributed.sync_batch_norm`` or when ``bn`` is a ``SyncBatchNorm`` (docs/distributed.md).

Two optional submodules serve the PaddleSlim/linger-style facade and are ``None`` in a plain
drop-in: ``input_fake_quant`` quantizes the module's input (Paddle quantizes the inputs of
conv and mul), ``output_fake_quant`` its output (linger's AHEAD_RELU quantizer). The embedding
modules, whose input is indices, have ``output_fake_quant`` only.
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init
from torch.nn.modules.utils import _pair, _single, _triple
from torch.nn.utils import fuse_conv_bn_weights

from .. import distributed as _distributed
from ..export import exporting as _exporting
from ..ops import abs_max, conv_bn_fake_quant_with_fold_scale, fold_weight
from .qconfig import get_qat_qconfig
from .weight import AbsMaxWeightFakeQuantize

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "ConvBnReLU1d",
    "ConvBnReLU2d",
    "ConvBnReLU3d",
    "ConvReLU1d",
    "ConvReLU2d",
    "ConvReLU3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "Embedding",
    "EmbeddingBag",
    "FOLD_MODES",
    "Linear",
    "LinearReLU",
    "QConfig",
    "freeze_bn_stats",
    "get_qat_module_mappings",
    "get_quantized_module_mappings",
    "update_bn_stats",
]

#: How BN folds into the weight while training (docs/convbn.md).
FOLD_MODES = ("running", "batch")

#: ``(activation, weight)`` fake-quantizer constructors; torch.ao's QConfig has the same fields.
QConfig = namedtuple("QConfig", ["activation", "weight"])


def _torch_ao():
    """``(nni, nniqat)`` from torch.ao when this torch still ships it, else ``(None, None)``."""
    try:
        import torch.ao.nn.intrinsic as nni
        import torch.ao.nn.intrinsic.qat as nniqat
    except ImportError:  # torch.ao.quantization removed
        return None, None
    return nni, nniqat


def _default_qconfig():
    return get_qat_qconfig()


def _is_per_channel(fake_quant) -> bool:
    if hasattr(fake_quant, "is_per_channel"):
        return bool(fake_quant.is_per_channel)
    return getattr(fake_quant, "qscheme", None) in (torch.per_channel_affine, torch.per_channel_symmetric,
                                                     torch.per_channel_affine_float_qparams)


def _build_weight_fake_quant(qconfig, factory_kwargs, **kwargs):
    try:
        return qconfig.weight(factory_kwargs=factory_kwargs, **kwargs)
    except TypeError:  # a fake-quantizer that takes no factory_kwargs
        return qconfig.weight(**kwargs)


def _make_weight_fake_quant(qconfig, factory_kwargs, weight, channel_axis=0):
    """The weight fake-quantizer of ``qconfig``, per channel along ``channel_axis`` (the weight's
    output-channel axis) when the qconfig's quantizer is per channel along the default axis 0,
    with its per-channel state sized from ``weight`` now (no resize in the first forward)."""
    fake_quant = _build_weight_fake_quant(qconfig, factory_kwargs)
    if channel_axis != 0 and _is_per_channel(fake_quant) and getattr(fake_quant, "ch_axis", 0) == 0:
        fake_quant = _build_weight_fake_quant(qconfig, factory_kwargs, ch_axis=channel_axis)
    if _is_per_channel(fake_quant) and callable(getattr(fake_quant, "init_channels", None)):
        axis = fake_quant.ch_axis
        if not -weight.dim() <= axis < weight.dim():
            raise IndexError(f"{type(fake_quant).__name__}: ch_axis={axis} is out of range for a {weight.dim()}-d "
                             f"input of shape {list(weight.shape)} (the weight); accepted: "
                             f"[{-weight.dim()}, {weight.dim() - 1}]")
        fake_quant.init_channels(weight.shape[axis])
    return fake_quant


def _check_fold_mode(fold_mode):
    if fold_mode not in FOLD_MODES:
        raise ValueError(f"fold_mode must be one of {FOLD_MODES}, got {fold_mode!r}")
    return fold_mode


def _apply(fake_quant, x):
    return x if fake_quant is None else fake_quant(x)


def _attach_quantizers(module, qconfig, factory_kwargs, channel_axis=0, quantizes_input=True):
    """qconfig (our default when None), the weight fake-quantizer, and the facade's empty slots
    (no input slot where the input is indices: the embeddings)."""
    module.qconfig = qconfig if qconfig is not None else _default_qconfig()
    module.weight_fake_quant = _make_weight_fake_quant(module.qconfig, factory_kwargs, module.weight, channel_axis)
    if quantizes_input:
        module.input_fake_quant = None
    module.output_fake_quant = None


def _check_float_module(cls, mod):
    """``cls.from_float``'s check that ``mod`` is the float layer ``cls`` converts from."""
    if not isinstance(mod, cls._FLOAT_MODULE):
        raise TypeError(f"{cls.__module__}.{cls.__name__}.from_float takes an nn.{cls._FLOAT_MODULE.__name__}, "
                        f"got {type(mod).__name__}")


def _fused_pair(mod):
    """``(mod[0], mod[1])`` of a torch.ao fused module or a sequence, ``(None, None)`` when ``mod``
    has no such items."""
    try:
        return mod[0], mod[1]
    except (TypeError, IndexError, KeyError):
        return None, None


def _with_relu(layer, fused_name):
    """``layer`` then ReLU: torch.ao's fused ``nni.<fused_name>`` when this torch ships it, else an
    ``nn.Sequential``."""
    nni, _ = _torch_ao()
    fused = getattr(nni, fused_name, None) if nni is not None else None
    return fused(layer, nn.ReLU()) if fused is not None else nn.Sequential(layer, nn.ReLU())


def _copy_weight_and_bias(dst, src, detach):
    """``dst`` takes ``src``'s weight and bias: shared (from_float, as torch.ao) or detached copies
    as new parameters (to_float)."""
    if detach:
        dst.weight = nn.Parameter(src.weight.detach())
        if src.bias is not None:
            dst.bias = nn.Parameter(src.bias.detach())
    else:
        dst.weight = src.weight
        dst.bias = src.bias
    return dst


# ---------------------------------------------------------------------------------------
# Convolutions and Linear


class _QATLayer:
    """``output_fake_quant(layer(input_fake_quant(x), weight_fake_quant(W)))`` and ``from_float``
    for the convolutions and Linear (mixed in before the torch layer, which gives ``_FLOAT_MODULE``
    and, as ``_layer_forward``, the layer's op with a given weight)."""

    _FLOAT_MODULE: type[nn.Module]

    def forward(self, input):
        input = _apply(self.input_fake_quant, input)
        out = self._layer_forward(input, self.weight_fake_quant(self.weight))
        return _apply(self.output_fake_quant, out)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        _check_float_module(cls, mod)
        return cls._from_float_layer(mod, getattr(mod, "qconfig", None))


class _QATReLU:
    """``relu(layer(x, weight_fake_quant(W), b))``: the QAT form of torch.ao's fused
    ``nni.<_FUSED_MODULE_NAME>`` (mixed in before a QAT ConvNd or Linear)."""

    _FUSED_MODULE_NAME: str

    def _layer_forward(self, input, weight):
        return F.relu(super()._layer_forward(input, weight))

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        """From torch.ao's fused module (or any ``(layer, ReLU)`` sequence) carrying a ``qconfig``;
        shares the layer's parameters, as torch.ao does."""
        layer, relu = _fused_pair(mod)
        if not isinstance(layer, cls._FLOAT_MODULE) or not isinstance(relu, nn.ReLU):
            raise TypeError(f"{cls.__module__}.{cls.__name__}.from_float takes a ({cls._FLOAT_MODULE.__name__}, "
                            f"ReLU) sequence such as torch.ao.nn.intrinsic.{cls._FUSED_MODULE_NAME}, "
                            f"got {type(mod).__name__}")
        return cls._from_float_layer(layer, getattr(mod, "qconfig", None))

    def to_float(self):
        return _with_relu(super().to_float(), self._FUSED_MODULE_NAME).train(self.training)


class _QATConv(_QATLayer):
    """``conv(x, weight_fake_quant(W), b)`` for Conv1d/2d/3d (mixed in before ``nn.ConvNd``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", qconfig=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs)

    def _layer_forward(self, input, weight):
        return self._conv_forward(input, weight, self.bias)

    @classmethod
    def _from_float_layer(cls, conv, qconfig):
        qat = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, qconfig=qconfig, device=conv.weight.device, dtype=conv.weight.dtype)
        return _copy_weight_and_bias(qat, conv, detach=False)

    def to_float(self):
        conv = self._FLOAT_MODULE(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                  self.dilation, self.groups, self.bias is not None, self.padding_mode)
        return _copy_weight_and_bias(conv, self, detach=True).train(self.training)


class Conv1d(_QATConv, nn.Conv1d):
    """Drop-in for ``torch.ao.nn.qat.Conv1d``: ``conv1d(x, weight_fake_quant(W), b)``.

    ``qconfig=None`` takes :func:`fakequant.qconfig.get_qat_qconfig`'s default.
    """

    _FLOAT_MODULE = nn.Conv1d


class Conv2d(_QATConv, nn.Conv2d):
    """Drop-in for ``torch.ao.nn.qat.Conv2d``: ``conv2d(x, weight_fake_quant(W), b)``.

    ``qconfig=None`` takes :func:`fakequant.qconfig.get_qat_qconfig`'s default.
    """

    _FLOAT_MODULE = nn.Conv2d


class Conv3d(_QATConv, nn.Conv3d):
    """Drop-in for ``torch.ao.nn.qat.Conv3d``: ``conv3d(x, weight_fake_quant(W), b)``.

    ``qconfig=None`` takes :func:`fakequant.qconfig.get_qat_qconfig`'s default.
    """

    _FLOAT_MODULE = nn.Conv3d


class ConvReLU1d(_QATReLU, Conv1d):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvReLU1d``: :class:`Conv1d` then ReLU."""

    _FUSED_MODULE_NAME = "ConvReLU1d"


class ConvReLU2d(_QATReLU, Conv2d):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvReLU2d``: :class:`Conv2d` then ReLU."""

    _FUSED_MODULE_NAME = "ConvReLU2d"


class ConvReLU3d(_QATReLU, Conv3d):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvReLU3d``: :class:`Conv3d` then ReLU."""

    _FUSED_MODULE_NAME = "ConvReLU3d"


class _QATConvTranspose(_QATLayer):
    """``conv_transpose(x, weight_fake_quant(W), b)`` (mixed in before ``nn.ConvTransposeNd``).

    The weight is ``[in_channels, out_channels / groups, *kernel]``: a per-channel weight
    quantizer built along the default axis 0 is built along axis 1 instead (the output
    channels, as for every other layer)."""

    _DIM: int

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", qconfig=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding, groups=groups, bias=bias, dilation=dilation,
                         padding_mode=padding_mode, **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs, channel_axis=1)

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._DIM, self.dilation)
        input = _apply(self.input_fake_quant, input)
        conv = F.conv_transpose1d if self._DIM == 1 else F.conv_transpose2d
        out = conv(input, self.weight_fake_quant(self.weight), self.bias, self.stride, self.padding, output_padding,
                   self.groups, self.dilation)
        return _apply(self.output_fake_quant, out)

    @classmethod
    def _from_float_layer(cls, mod, qconfig):
        qat = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                  output_padding=mod.output_padding, groups=mod.groups, bias=mod.bias is not None,
                  dilation=mod.dilation, padding_mode=mod.padding_mode, qconfig=qconfig,
                  device=mod.weight.device, dtype=mod.weight.dtype)
        return _copy_weight_and_bias(qat, mod, detach=False)

    def to_float(self):
        conv = self._FLOAT_MODULE(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                  self.output_padding, self.groups, self.bias is not None, self.dilation,
                                  self.padding_mode)
        return _copy_weight_and_bias(conv, self, detach=True).train(self.training)


class ConvTranspose1d(_QATConvTranspose, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with weight fake quantization (per channel along the weight's
    output-channel axis 1); ``nn.ConvTranspose1d``'s arguments plus ``qconfig``."""

    _FLOAT_MODULE = nn.ConvTranspose1d
    _DIM = 1


class ConvTranspose2d(_QATConvTranspose, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with weight fake quantization (per channel along the weight's
    output-channel axis 1); ``nn.ConvTranspose2d``'s arguments plus ``qconfig``."""

    _FLOAT_MODULE = nn.ConvTranspose2d
    _DIM = 2


class Linear(_QATLayer, nn.Linear):
    """Drop-in for ``torch.ao.nn.qat.Linear``: ``linear(x, weight_fake_quant(W), b)``."""

    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features, out_features, bias=True, qconfig=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(in_features, out_features, bias, **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs)

    def _layer_forward(self, input, weight):
        return F.linear(input, weight, self.bias)

    @classmethod
    def _from_float_layer(cls, linear, qconfig):
        qat = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, qconfig=qconfig,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        return _copy_weight_and_bias(qat, linear, detach=False)

    def to_float(self):
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        return _copy_weight_and_bias(linear, self, detach=True).train(self.training)


class LinearReLU(_QATReLU, Linear):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.LinearReLU``: :class:`Linear` then ReLU."""

    _FUSED_MODULE_NAME = "LinearReLU"


# ---------------------------------------------------------------------------------------
# Embeddings


class Embedding(nn.Embedding):
    """``torch.ao.nn.qat.Embedding`` (same constructor, state dict, ``from_float`` /
    ``to_float``): ``embedding(indices, weight_fake_quant(W))``, the weight quantized per row
    when the quantizer is per channel (axis 0).

    torch.ao's module accepts only ``per_channel_affine_float_qparams`` weight quantizers
    (what its quantized ``nn.quantized.Embedding`` is converted from); this one takes any
    weight fake-quantizer, ``qconfig=None`` giving :func:`fakequant.qconfig.get_qat_qconfig`'s
    default (per-row symmetric qint8). Converting to ``torch.ao.nn.quantized.Embedding`` still
    needs torch.ao's float-qparams quantizer (e.g. ``torch.ao.quantization.default_embedding_qat_qconfig``).
    ``output_fake_quant`` (``None`` by default) quantizes the output.
    """

    _FLOAT_MODULE = nn.Embedding

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None, qconfig=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
                         sparse, _weight, **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs, quantizes_input=False)

    def forward(self, input):
        out = F.embedding(input, self.weight_fake_quant(self.weight), self.padding_idx, self.max_norm,
                          self.norm_type, self.scale_grad_by_freq, self.sparse)
        return _apply(self.output_fake_quant, out)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        _check_float_module(cls, mod)
        return cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, mod.max_norm, mod.norm_type,
                   mod.scale_grad_by_freq, mod.sparse, mod.weight, qconfig=getattr(mod, "qconfig", None))

    def to_float(self):
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm,
                                 self.norm_type, self.scale_grad_by_freq, self.sparse, None)
        embedding.weight = nn.Parameter(self.weight.detach())
        return embedding.train(self.training)


class EmbeddingBag(nn.EmbeddingBag):
    """``torch.ao.nn.qat.EmbeddingBag`` (same constructor, state dict, ``from_float`` /
    ``to_float``): ``embedding_bag(indices, weight_fake_quant(W), ...)``; any weight
    fake-quantizer, as :class:`Embedding`."""

    _FLOAT_MODULE = nn.EmbeddingBag

    def __init__(self, num_embeddings, embedding_dim, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                 mode="mean", sparse=False, _weight=None, include_last_offset=False, padding_idx=None, qconfig=None,
                 device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
                         _weight, include_last_offset, padding_idx, **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs, quantizes_input=False)

    def forward(self, input, offsets=None, per_sample_weights=None):
        out = F.embedding_bag(input, self.weight_fake_quant(self.weight), offsets, self.max_norm, self.norm_type,
                              self.scale_grad_by_freq, self.mode, self.sparse, per_sample_weights,
                              self.include_last_offset, self.padding_idx)
        return _apply(self.output_fake_quant, out)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        _check_float_module(cls, mod)
        return cls(mod.num_embeddings, mod.embedding_dim, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq,
                   mod.mode, mod.sparse, mod.weight, mod.include_last_offset, mod.padding_idx,
                   qconfig=getattr(mod, "qconfig", None))

    def to_float(self):
        bag = nn.EmbeddingBag(self.num_embeddings, self.embedding_dim, self.max_norm, self.norm_type,
                              self.scale_grad_by_freq, self.mode, self.sparse, None, self.include_last_offset,
                              self.padding_idx)
        bag.weight = nn.Parameter(self.weight.detach())
        return bag.train(self.training)


# ---------------------------------------------------------------------------------------
# Conv + BatchNorm


def _flag(fake_quant, name):
    """A FakeQuantizeBase on/off switch as a Python bool: our modules keep a host copy (no
    device read); others have only the uint8 buffer."""
    host = {"observer_enabled": "_observer_on", "fake_quant_enabled": "_fake_quant_on"}[name]
    if hasattr(fake_quant, host):
        return bool(getattr(fake_quant, host))
    return bool(getattr(fake_quant, name).reshape(-1)[0])


def _fused_weight_spec(weight_fake_quant):
    """The arguments of the fused op's weight quantization when ``weight_fake_quant`` is ours
    and does exactly what the op does (per-output-channel abs-max recomputed every step), else
    ``None`` (the module then composes the same math from PyTorch ops)."""
    if type(weight_fake_quant) is not AbsMaxWeightFakeQuantize or weight_fake_quant.ch_axis != 0:
        return None
    if not _flag(weight_fake_quant, "observer_enabled"):
        return None  # frozen scales: the op recomputes them, so compose instead
    return {
        "quantize_weight": _flag(weight_fake_quant, "fake_quant_enabled"),
        "quant_min": weight_fake_quant.quant_min,
        "quant_max": weight_fake_quant.quant_max,
        "rounding": weight_fake_quant.rounding,
        "weight_eps": weight_fake_quant.eps,
    }


@torch.no_grad()
def _weight_scale_of_fold(weight, fold_scale, quant_min, quant_max, eps):
    """The scales ``fake_quantize_weight_abs_max`` gives the fold ``W * s`` the fused op
    quantised (``max(absmax / ((quant_max - quant_min) / 2), eps)`` in float32, quant_math.h
    ``symmetric_scale``)."""
    amax = abs_max(fold_weight(weight.detach(), fold_scale), 0)
    scale = amax / (float(quant_max - quant_min) * 0.5)
    return torch.where(scale < eps, torch.full_like(scale, eps), scale)


@torch.library.custom_op("fakequant_nn::state_snapshot", mutates_args=())
def _state_snapshot(state: torch.Tensor) -> torch.Tensor:
    """A copy of module state (BN running statistics) that a differentiable expression reads
    before the state is updated in place. Opaque to torch.compile's partitioner, so the backward
    gets the saved copy instead of recomputing from the buffer after its update (which gave
    wrong gradients; pytorch/pytorch#197039)."""
    return state.clone()


@_state_snapshot.register_fake
def _state_snapshot_fake(state):
    return torch.empty_like(state)


def _read_before_update(state: torch.Tensor) -> torch.Tensor:
    return _state_snapshot(state) if torch.compiler.is_compiling() else state


class _STEMask(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by ``mask``."""

    @staticmethod
    def forward(ctx, weight, mask):
        ctx.save_for_backward(mask)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _ste_mask(weight_fake_quant, folded):
    """The clipped-STE mask of ``weight_fake_quant`` at ``folded`` from the qparams it just used."""
    scale, zero_point = weight_fake_quant.calculate_qparams()
    shape = [-1] + [1] * (folded.dim() - 1)
    if scale.numel() > 1:
        axis = getattr(weight_fake_quant, "ch_axis", 0)
        shape = [1] * folded.dim()
        shape[axis] = -1
    dtype = torch.promote_types(folded.dtype, torch.float32)
    scale = scale.to(folded.device, dtype).reshape(shape)
    zero_point = zero_point.to(folded.device).reshape(shape)
    q = torch.round(folded.to(dtype) * (1.0 / scale)) + zero_point
    return ((q >= weight_fake_quant.quant_min) & (q <= weight_fake_quant.quant_max)).to(folded.dtype)


class _FoldedBatchNorm:
    """The BN inside a ConvBn module (mixed in before ``nn.BatchNormNd``). It never carries a
    qconfig, so torch.ao's ``prepare`` and ``convert``, which walk into children of modules that
    are not theirs, leave it alone (it is folded into the conv). Its float32 parameters and
    statistics stay float32 through ``model.to(torch.float16 / torch.bfloat16)`` (the fused op
    updates float32 statistics in place; mixed-precision users keep BatchNorm in float32 too);
    other conversions (``.double()`` for gradient checks, device moves) apply as usual."""

    @property
    def qconfig(self):
        return None

    @qconfig.setter
    def qconfig(self, value):
        pass

    def _apply(self, fn, recurse=True):
        def keep_float32(t):
            moved = fn(t)
            if isinstance(moved, torch.Tensor) and t.dtype == torch.float32 and moved.dtype in _HALF_DTYPES:
                return t.data.to(moved.device)
            return moved

        return super()._apply(keep_float32, recurse)


_HALF_DTYPES = (torch.float16, torch.bfloat16)


class _FoldedBatchNorm1d(_FoldedBatchNorm, nn.BatchNorm1d):
    pass


class _FoldedBatchNorm2d(_FoldedBatchNorm, nn.BatchNorm2d):
    pass


class _FoldedBatchNorm3d(_FoldedBatchNorm, nn.BatchNorm3d):
    pass


#: Per dimension: the float conv and BatchNorm a ConvBn module converts from, and its folded BN.
_CONV_BN_MODULES = {
    1: (nn.Conv1d, nn.BatchNorm1d, _FoldedBatchNorm1d),
    2: (nn.Conv2d, nn.BatchNorm2d, _FoldedBatchNorm2d),
    3: (nn.Conv3d, nn.BatchNorm3d, _FoldedBatchNorm3d),
}


class _ConvBnNd:
    """Conv + BatchNorm (+ ReLU) with BN folded into the fake-quantized weight (mixed in before
    ``nn.ConvNd``): the common part of ConvBn1d/2d/3d and ConvBnReLU1d/2d/3d."""

    _version = 2
    _DIM: int
    _FLOAT_CONV_MODULE: type[nn.Module]
    _FLOAT_BN_MODULE: type[nn.Module]
    _FOLDED_BN: type[nn.Module]
    _FLOAT_RELU_MODULE = None
    _RELU = False
    #: Whether the fused op (2-d only) runs with AbsMaxWeightFakeQuantize(ch_axis=0).
    _FUSED_OP = False
    #: fakequant.distributed.sync_batch_norm finds the modules by it.
    _batch_norm_synchronisable = True

    def __init_subclass__(cls, dim=None, relu=False, **kwargs):
        """``class ConvBn2d(_ConvBnNd, nn.Conv2d, dim=2)`` sets the dimension and the float modules
        of that dimension; ``relu=True`` adds the ReLU."""
        super().__init_subclass__(**kwargs)
        if dim is not None:
            cls._DIM = dim
            cls._FLOAT_CONV_MODULE, cls._FLOAT_BN_MODULE, cls._FOLDED_BN = _CONV_BN_MODULES[dim]
        if relu:
            cls._FLOAT_RELU_MODULE = nn.ReLU
            cls._RELU = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=None, padding_mode="zeros", eps=1e-05, momentum=0.1, freeze_bn=False, qconfig=None,
                 *, fold_mode="running"):
        tup = {1: _single, 2: _pair, 3: _triple}[self._DIM]
        super().__init__(in_channels, out_channels, tup(kernel_size), stride=tup(stride),
                         padding=padding if isinstance(padding, str) else tup(padding),
                         dilation=tup(dilation), groups=groups, bias=False, padding_mode=padding_mode)
        self.qconfig = qconfig if qconfig is not None else _default_qconfig()
        self.fold_mode = _check_fold_mode(fold_mode)
        self.freeze_bn = freeze_bn if self.training else True
        self.bn = self._FOLDED_BN(out_channels, eps, momentum, True, True)
        self.weight_fake_quant = _make_weight_fake_quant(self.qconfig, {}, self.weight)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.input_fake_quant = None
        self.output_fake_quant = None
        self.reset_bn_parameters()
        if self.training and not freeze_bn:
            self.update_bn_stats()
        else:
            self.freeze_bn_stats()

    # ---- BN state, as torch.ao's _ConvBnNd ----
    def reset_running_stats(self):
        self.bn.reset_running_stats()

    def reset_bn_parameters(self):
        self.bn.reset_running_stats()
        init.uniform_(self.bn.weight)
        init.zeros_(self.bn.bias)
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def update_bn_stats(self):
        self.freeze_bn = False
        self.bn.training = True
        return self

    def freeze_bn_stats(self):
        self.freeze_bn = True
        self.bn.training = False
        return self

    def train(self, mode=True):
        # A frozen BN stays in eval mode whatever the model's mode (as torch.ao's module).
        self.training = mode
        for name, module in self.named_children():
            if name != "bn" or not self.freeze_bn:
                module.train(mode)
        return self

    # ---- forward ----
    def _channel_shape(self):
        return (1, -1) + (1,) * self._DIM

    def _weight_shape(self):
        return (-1,) + (1,) * (self._DIM + 1)

    def _exponential_average_factor(self):
        bn = self.bn
        if not (bn.training and bn.track_running_stats):
            return 0.0
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
        return bn.momentum

    def forward(self, input):
        input = _apply(self.input_fake_quant, input)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0,) * self._DIM
        else:
            padding = self.padding  # a tuple, or 'same' / 'valid'
        spec = None
        # Exported in eval, the composite path gives the fused op's values (the same fold arithmetic)
        # without the op's in-place running statistics, which export wraps in a form torch.onnx cannot translate.
        if self._FUSED_OP and not isinstance(padding, str) and not (self.bn.training is False and _exporting()):
            spec = _fused_weight_spec(self.weight_fake_quant)
        group = _distributed.batch_norm_group(self) if self.bn.training else None
        factor = self._exponential_average_factor()
        if spec is not None and group is None:
            out, fold_scale = conv_bn_fake_quant_with_fold_scale(
                input, self.weight, self.bias, self.bn.weight, self.bn.bias, self.bn.running_mean,
                self.bn.running_var, stride=self.stride, padding=padding, dilation=self.dilation,
                groups=self.groups, eps=self.bn.eps, momentum=factor, fold_mode=self.fold_mode,
                training=self.bn.training, relu=self._RELU, **spec)
            # The observer saw the fold: keep its scales, as AbsMaxWeightFakeQuantize's forward does.
            self.weight_fake_quant._store_scale(_weight_scale_of_fold(
                self.weight, fold_scale, spec["quant_min"], spec["quant_max"], spec["weight_eps"]))
        else:  # with a group: its batch statistics (sync_batch_norm, SyncBatchNorm; docs/distributed.md)
            out = self._forward_composite(input, padding, factor, group)
            if self._RELU:
                out = F.relu(out)
        return _apply(self.output_fake_quant, out)

    def _conv(self, input, weight, padding):
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self._DIM]
        return conv(input, weight, None, self.stride, padding, self.dilation, self.groups)

    def _forward_composite(self, x, padding, factor, group=None):
        """The op's math composed from PyTorch ops, for any weight fake-quantizer; with a process
        ``group``, the batch statistics are the group's (one all_reduce forward, one backward)."""
        bn, w, b = self.bn, self.weight, self.bias
        shape, dims = self._channel_shape(), self._reduce_dims()
        gamma, beta = bn.weight, bn.bias
        if not bn.training:  # eval or frozen BN: fold with the running statistics
            folded, folded_bias = self._running_fold(w, b)
            out = self._conv(x, self.weight_fake_quant(folded), padding)
            return out + folded_bias.reshape(shape).to(out.dtype)
        if self.fold_mode == "running":
            # read before the statistics update writes running_var in place
            sigma = torch.sqrt(_read_before_update(bn.running_var) + bn.eps)
            s = gamma / sigma
            s = torch.where(s == 0, torch.ones_like(s), s)  # gamma = 0: no NaN, y = beta there
            conv = self._conv(x, self.weight_fake_quant((w * s.reshape(self._weight_shape())).to(w.dtype)), padding)
            conv = conv / s.reshape(shape).to(conv.dtype)
            if b is not None:
                conv = conv + b.reshape(shape)
            if group is None:
                return F.batch_norm(conv, bn.running_mean, bn.running_var, gamma, beta, True, factor, bn.eps)
            mean, var, n = _distributed.global_moments(conv, dims, bn.running_mean, group)
            self._update_running_stats(mean, var, n, factor)
            return self._normalise(conv, mean, var, group, n)
        # batch: forward fused with the batch statistics, backward unfused (docs/convbn.md)
        acc = torch.promote_types(x.dtype, torch.float32)  # statistics in float32 at least
        bias = b.detach().to(acc) if b is not None else torch.zeros_like(bn.running_mean, dtype=acc)
        with torch.no_grad():
            if group is None:
                z0 = self._conv(x, w, padding).to(acc)
                var, mean = torch.var_mean(z0, dim=dims, unbiased=False)
                n = z0.numel() // z0.size(1)
            else:
                mean, var, n = _distributed.global_moments(self._conv(x, w, padding), dims,
                                                           bn.running_mean.to(acc) - bias, group)
            self._update_running_stats(mean + bias, var, n, factor)
            sigma = torch.sqrt(var + bn.eps)
            k = (gamma.to(acc) / sigma).reshape(self._weight_shape())
        folded = (w.detach().to(acc) * k).to(w.dtype)
        with torch.no_grad():
            wq = self.weight_fake_quant(folded)
            mask = _ste_mask(self.weight_fake_quant, folded)
            fused = self._conv(x, wq, padding) + (beta - gamma * mean / sigma).reshape(shape).to(x.dtype)
        z = self._conv(x, _STEMask.apply(w, mask), padding)
        if b is not None:
            z = z + b.reshape(shape)
        if group is None:
            unfused = F.batch_norm(z, None, None, gamma, beta, True, 0.0, bn.eps)
        else:
            unfused = self._normalise(z, mean + bias, var, group, n)
        return unfused + (fused - unfused).detach()

    def _update_running_stats(self, mean, var, n, factor):
        """The running statistics' update with the batch's mean and biased variance (made unbiased
        with the count ``n``: an int, or the group's as a tensor), as F.batch_norm's."""
        bn = self.bn
        with torch.no_grad():
            bn.running_mean.mul_(1 - factor).add_(factor * mean)
            correction = n / (n - 1).clamp_min(1) if isinstance(n, torch.Tensor) else n / max(n - 1, 1)
            bn.running_var.mul_(1 - factor).add_(factor * var * correction)

    def _normalise(self, z, mean, var, group, n):
        """BN of ``z`` (training) with the group's ``mean`` / ``var``, differentiable through them
        as SyncBatchNorm (SyncedMoments)."""
        bn, shape = self.bn, self._channel_shape()
        mean, var = _distributed.SyncedMoments.apply(z, mean, var, n, group)
        scale = bn.weight * torch.rsqrt(var + bn.eps)
        return ((z - mean.reshape(shape)) * scale.reshape(shape) + bn.bias.reshape(shape)).to(z.dtype)

    def _reduce_dims(self):
        return (0,) + tuple(range(2, 2 + self._DIM))

    # ---- conversion ----
    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, *, fold_mode="running"):
        """From ``torch.ao.nn.intrinsic.ConvBn{1,2,3}d`` (or any ``(ConvNd, BatchNormNd[, ReLU])``
        sequence) carrying a ``qconfig``; shares its parameters, as torch.ao does."""
        conv, bn = _fused_pair(mod)
        if not isinstance(conv, cls._FLOAT_CONV_MODULE) or not isinstance(bn, cls._FLOAT_BN_MODULE):
            fused = f"ConvBn{'ReLU' if cls._RELU else ''}{cls._DIM}d"
            raise TypeError(f"{cls.__module__}.{cls.__name__}.from_float takes a ({cls._FLOAT_CONV_MODULE.__name__}, "
                            f"{cls._FLOAT_BN_MODULE.__name__}{', ReLU' if cls._RELU else ''}) sequence such as "
                            f"torch.ao.nn.intrinsic.{fused}, got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        qat = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, bn.eps, bn.momentum,
                  False, qconfig, fold_mode=fold_mode)
        qat.weight = conv.weight
        qat.bias = conv.bias
        qat.bn.weight = bn.weight
        qat.bn.bias = bn.bias
        qat.bn.running_mean = bn.running_mean
        qat.bn.running_var = bn.running_var
        qat.bn.num_batches_tracked = bn.num_batches_tracked
        return qat

    def _running_fold(self, w, b):
        """Eval fold with the running statistics, with the op's arithmetic (quant_math.h
        convbn_fold_eval): s = gamma / sqrt(running_var + eps) in float64, rounded once to
        float32 for the weight; the bias ``beta + s * (b - running_mean)`` in float64."""
        bn = self.bn
        s = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
        bias = b.double() if b is not None else torch.zeros_like(s)
        folded_bias = bn.bias.double() + s * (bias - bn.running_mean.double())
        return w * s.to(w.dtype if w.dtype != torch.float64 else torch.float64).reshape(self._weight_shape()), \
            folded_bias.to(bn.bias.dtype)

    def eval_folded_weight_and_bias(self):
        """The folded weight (before weight fake quantization) and bias of the eval forward, computed
        exactly as it computes them (detached)."""
        with torch.no_grad():
            return self._running_fold(self.weight.detach(), None if self.bias is None else self.bias.detach())

    def folded_weight_and_bias(self):
        """Weight and bias with BN folded in with the running statistics (detached)."""
        return fuse_conv_bn_weights(self.weight.detach(), None if self.bias is None else self.bias.detach(),
                                    self.bn.running_mean, self.bn.running_var, self.bn.eps,
                                    self.bn.weight.detach(), self.bn.bias.detach())

    def to_float(self):
        conv = self._FLOAT_CONV_MODULE(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                       self.padding, self.dilation, self.groups, True, self.padding_mode)
        conv.weight, conv.bias = self.folded_weight_and_bias()
        conv.train(self.training)
        if self._RELU:
            return _with_relu(conv, f"ConvReLU{self._DIM}d").train(self.training)
        return conv

    def _folded_conv(self):
        """A plain ConvNd with the folded weight that still carries this module's fake-quantizers
        (what torch.ao's quantized modules convert from)."""
        conv = self.to_float()
        conv = conv[0] if isinstance(conv, nn.Sequential) else conv
        conv.qconfig = self.qconfig
        conv.weight_fake_quant = self.weight_fake_quant
        if hasattr(self, "activation_post_process"):
            conv.activation_post_process = self.activation_post_process
        return conv

    def extra_repr(self):
        return super().extra_repr() + f", fold_mode={self.fold_mode!r}"


class ConvBn1d(_ConvBnNd, nn.Conv1d, dim=1):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBn1d`` (Conv1d + BatchNorm1d, weight fake-quantized
    after folding BN into it), with ``fold_mode``; the math composed from PyTorch ops."""


class ConvBnReLU1d(ConvBn1d, relu=True):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBnReLU1d``: :class:`ConvBn1d` then ReLU."""


class ConvBn2d(_ConvBnNd, nn.Conv2d, dim=2):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBn2d`` (Conv2d + BatchNorm2d, weight fake-quantized
    after folding BN into it), with ``fold_mode`` (``"running"`` or ``"batch"``).

    Eval mode and ``freeze_bn_stats()`` fold with the running statistics in both modes.
    ``gamma = 0`` gives no NaN (``torch.ao``'s module does, pytorch#77434).
    """

    _FUSED_OP = True


class ConvBnReLU2d(ConvBn2d, relu=True):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBnReLU2d``: :class:`ConvBn2d` then ReLU (fused into
    the op's epilogue on the fast path)."""


class ConvBn3d(_ConvBnNd, nn.Conv3d, dim=3):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBn3d`` (Conv3d + BatchNorm3d, weight fake-quantized
    after folding BN into it), with ``fold_mode``; the math composed from PyTorch ops."""


class ConvBnReLU3d(ConvBn3d, relu=True):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBnReLU3d``: :class:`ConvBn3d` then ReLU."""


def freeze_bn_stats(mod):
    """``model.apply(freeze_bn_stats)`` for our ConvBn modules and torch.ao's (the same as
    ``torch.ao.nn.intrinsic.qat.freeze_bn_stats`` once this module is imported: see
    :func:`_extend_torch_ao_bn_switches`)."""
    _switch_bn_stats(mod, "freeze_bn_stats")


def update_bn_stats(mod):
    """``model.apply(update_bn_stats)`` for our ConvBn modules and torch.ao's."""
    _switch_bn_stats(mod, "update_bn_stats")


def _switch_bn_stats(mod, name):
    """Our ConvBn module's method ``name``, or torch.ao's function ``name`` for anything else."""
    if isinstance(mod, _ConvBnNd):
        getattr(mod, name)()
    else:
        _, nniqat = _torch_ao()
        if nniqat is not None:
            _original(getattr(nniqat, name))(mod)


def _original(fn):
    """torch.ao's own function behind one that :func:`_extend_torch_ao_bn_switches` replaced."""
    return getattr(fn, "__fakequant_original__", fn)


def _extend_torch_ao_bn_switches():
    """Make torch.ao's ``freeze_bn_stats`` / ``update_bn_stats`` reach our ConvBn modules too.

    The PyTorch QAT recipe freezes BN with ``model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)``;
    torch.ao's function matches its own six classes by exact type (``type(mod) in {...}``), so
    on our modules it would do nothing, silently. Each module that exports torch.ao's function
    (``torch.ao.nn.intrinsic.qat``, its ``modules`` and ``conv_fused``, the ``torch.nn.intrinsic``
    aliases) gets a wrapper that handles ours and calls torch.ao's function for everything else,
    so torch.ao's modules behave exactly as before. A reference taken before ``import fakequant``
    (``from torch.ao.nn.intrinsic.qat import freeze_bn_stats`` earlier) keeps the original."""
    import sys

    _, nniqat = _torch_ao()
    if nniqat is None:
        return
    for name, ours in (("freeze_bn_stats", freeze_bn_stats), ("update_bn_stats", update_bn_stats)):
        theirs = _original(getattr(nniqat, name, None))
        if theirs is None:
            continue

        def extended(mod, _ours=ours, _theirs=theirs):
            return _ours(mod) if isinstance(mod, _ConvBnNd) else _theirs(mod)

        extended.__name__ = extended.__qualname__ = name
        extended.__module__ = theirs.__module__
        extended.__doc__ = (f"torch.ao's ``{name}``, extended by fakequant to its ConvBn modules "
                            "(fakequant.nn.qat).")
        extended.__fakequant_original__ = theirs
        for module in list(sys.modules.values()):
            if module is not None and getattr(module, name, None) is theirs and \
                    module.__name__.startswith(("torch.ao.nn.intrinsic", "torch.nn.intrinsic")):
                setattr(module, name, extended)


def get_qat_module_mappings():
    """``prepare_qat(model, mapping=get_qat_module_mappings())`` swaps float (and torch.ao
    fused) modules for ours: Conv1d/2d/3d, ConvTranspose1d/2d, Linear, Embedding, EmbeddingBag,
    and torch.ao's fused ConvBn{1,2,3}d / ConvBnReLU{1,2,3}d. (torch.ao keeps its embedding
    entries in ``get_embedding_qat_module_mappings``; here they are in the one mapping, so a
    model's embeddings train quantized with the qconfig they carry.) torch.ao's fused ConvReLU /
    LinearReLU become our ConvReLU{1,2,3}d / LinearReLU. torch.ao's ``nni.LinearBn1d`` (Linear +
    BatchNorm1d) has no counterpart here yet: with this mapping it is not swapped."""
    mapping = {
        nn.Conv1d: Conv1d,
        nn.Conv2d: Conv2d,
        nn.Conv3d: Conv3d,
        nn.ConvTranspose1d: ConvTranspose1d,
        nn.ConvTranspose2d: ConvTranspose2d,
        nn.Linear: Linear,
        nn.modules.linear.NonDynamicallyQuantizableLinear: Linear,
        nn.Embedding: Embedding,
        nn.EmbeddingBag: EmbeddingBag,
    }
    nni, _ = _torch_ao()
    if nni is not None:
        mapping.update({
            nni.ConvBn1d: ConvBn1d, nni.ConvBn2d: ConvBn2d, nni.ConvBn3d: ConvBn3d,
            nni.ConvBnReLU1d: ConvBnReLU1d, nni.ConvBnReLU2d: ConvBnReLU2d, nni.ConvBnReLU3d: ConvBnReLU3d,
            nni.ConvReLU1d: ConvReLU1d, nni.ConvReLU2d: ConvReLU2d, nni.ConvReLU3d: ConvReLU3d,
            nni.LinearReLU: LinearReLU,
        })
    return mapping


class _FromFolded:
    """Mapping entry for torch.ao ``convert``: folds BN, then hands the folded conv to ``target``."""

    def __init__(self, target):
        self.target = target

    def from_float(self, mod, use_precomputed_fake_quant=False):
        return self.target.from_float(mod._folded_conv(), use_precomputed_fake_quant=use_precomputed_fake_quant)


class _ViaFloat:
    """Mapping entry for torch.ao ``convert`` of a module whose torch.ao quantized counterpart
    converts only from the float layer (``nn.ConvTranspose*``, or by exact type ``nn.Embedding``):
    it gets the float layer, with this module's trained weight quantizer as its qconfig's
    weight (torch.ao's modules run their weight quantizer once more on the weight, as for
    convolutions)."""

    def __init__(self, target, per_tensor_only=False):
        self.target = target
        self.per_tensor_only = per_tensor_only

    def from_float(self, mod, use_precomputed_fake_quant=False):
        if self.per_tensor_only and _is_per_channel(mod.weight_fake_quant):
            raise ValueError(f"{type(mod).__name__}: torch.ao's quantized {self.target.__name__} takes per-tensor "
                             f"weights only; this module's weight quantizer is per channel (use a per-tensor weight "
                             f"qconfig for transposed convolutions, or fakequant.convert)")
        float_layer = mod.to_float()
        trained = mod.weight_fake_quant
        float_layer.qconfig = type(mod.qconfig)(activation=mod.qconfig.activation, weight=lambda: trained)
        if hasattr(mod, "activation_post_process"):
            float_layer.activation_post_process = mod.activation_post_process
        return self.target.from_float(float_layer)


def get_quantized_module_mappings():
    """``torch.ao.quantization.convert(model, mapping=get_quantized_module_mappings())``: our QAT
    modules to torch.ao's quantized modules (BN folded with the running statistics). Embeddings
    convert when their weight quantizer is torch.ao's float-qparams one (as in torch.ao)."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

    mapping = dict(get_default_static_quant_module_mappings())
    mapping.update({
        Conv1d: nnq.Conv1d,
        Conv2d: nnq.Conv2d,
        Conv3d: nnq.Conv3d,
        ConvTranspose1d: _ViaFloat(nnq.ConvTranspose1d, per_tensor_only=True),
        ConvTranspose2d: _ViaFloat(nnq.ConvTranspose2d, per_tensor_only=True),
        Linear: nnq.Linear,
        ConvReLU1d: nniq.ConvReLU1d,
        ConvReLU2d: nniq.ConvReLU2d,
        ConvReLU3d: nniq.ConvReLU3d,
        LinearReLU: nniq.LinearReLU,
        Embedding: _ViaFloat(nnq.Embedding),
        EmbeddingBag: nnq.EmbeddingBag,
        ConvBn1d: _FromFolded(nnq.Conv1d),
        ConvBn2d: _FromFolded(nnq.Conv2d),
        ConvBn3d: _FromFolded(nnq.Conv3d),
        ConvBnReLU1d: _FromFolded(nniq.ConvReLU1d),
        ConvBnReLU2d: _FromFolded(nniq.ConvReLU2d),
        ConvBnReLU3d: _FromFolded(nniq.ConvReLU3d),
    })
    return mapping


_extend_torch_ao_bn_switches()
