"""QAT modules that drop into PyTorch's eager QAT flow.

``Conv2d``, ``Linear``, ``ConvBn2d`` and ``ConvBnReLU2d`` take the constructor arguments of
``torch.ao.nn.qat`` / ``torch.ao.nn.intrinsic.qat`` (plus optional keyword-only extras), keep
the same parameter and buffer names (state dicts are interchangeable), and have
``from_float``, ``to_float``, ``freeze_bn_stats`` and ``update_bn_stats``. They do not import
``torch.ao``: they work where it has been removed, and an existing ``prepare_qat`` flow
switches to them with ``mapping=get_qat_module_mappings()``.

``ConvBn2d`` / ``ConvBnReLU2d`` run the fused ConvBN op (:func:`fakequant.conv_bn_fake_quant`)
when their weight fake-quantizer is :class:`fakequant.nn.AbsMaxWeightFakeQuantize` per output
channel (the default of :func:`fakequant.qconfig.get_qat_qconfig`); with any other weight
fake-quantizer they run the same math composed from PyTorch ops. ``fold_mode`` picks how BN
folds into the weight during training (docs/convbn.md): ``"running"`` (the default, the
values of ``torch.ao.nn.intrinsic.qat.ConvBn2d``) or ``"batch"`` (forward fused with the
batch statistics, backward unfused; the default of :func:`fakequant.quant_aware`).

Two optional submodules serve the PaddleSlim/linger-style facade and are ``None`` in a plain
drop-in: ``input_fake_quant`` quantizes the module's input (Paddle quantizes the inputs of
conv and mul), ``output_fake_quant`` its output (linger's AHEAD_RELU quantizer).
"""

from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init
from torch.nn.modules.utils import _pair
from torch.nn.utils import fuse_conv_bn_weights

from ..convbn import conv_bn_fake_quant
from .fake_quantize import AbsMaxWeightFakeQuantize

__all__ = [
    "Conv2d",
    "ConvBn2d",
    "ConvBnReLU2d",
    "FOLD_MODES",
    "Linear",
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
    from ..qconfig import get_qat_qconfig

    return get_qat_qconfig()


def _make_weight_fake_quant(qconfig, factory_kwargs):
    try:
        return qconfig.weight(factory_kwargs=factory_kwargs)
    except TypeError:  # a fake-quantizer that takes no factory_kwargs
        return qconfig.weight()


def _check_fold_mode(fold_mode):
    if fold_mode not in FOLD_MODES:
        raise ValueError(f"fold_mode must be one of {FOLD_MODES}, got {fold_mode!r}")
    return fold_mode


def _apply(fake_quant, x):
    return x if fake_quant is None else fake_quant(x)


def _attach_quantizers(module, qconfig, factory_kwargs):
    """qconfig (our default when None), the weight fake-quantizer, and the facade's empty slots."""
    module.qconfig = qconfig if qconfig is not None else _default_qconfig()
    module.weight_fake_quant = _make_weight_fake_quant(module.qconfig, factory_kwargs)
    module.input_fake_quant = None
    module.output_fake_quant = None


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


class Conv2d(nn.Conv2d):
    """Drop-in for ``torch.ao.nn.qat.Conv2d``: ``conv(x, weight_fake_quant(W), b)``.

    ``qconfig=None`` takes :func:`fakequant.qconfig.get_qat_qconfig`'s default.
    """

    _FLOAT_MODULE = nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", qconfig=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs)

    def forward(self, input):
        input = _apply(self.input_fake_quant, input)
        out = self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias)
        return _apply(self.output_fake_quant, out)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        if not isinstance(mod, nn.Conv2d):
            raise TypeError(f"{cls.__module__}.{cls.__name__}.from_float takes an nn.Conv2d, got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        qat = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                  dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None,
                  padding_mode=mod.padding_mode, qconfig=qconfig)
        return _copy_weight_and_bias(qat, mod, detach=False)

    def to_float(self):
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode)
        return _copy_weight_and_bias(conv, self, detach=True).train(self.training)


class Linear(nn.Linear):
    """Drop-in for ``torch.ao.nn.qat.Linear``: ``linear(x, weight_fake_quant(W), b)``."""

    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features, out_features, bias=True, qconfig=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(in_features, out_features, bias, **factory_kwargs)
        _attach_quantizers(self, qconfig, factory_kwargs)

    def forward(self, input):
        input = _apply(self.input_fake_quant, input)
        out = F.linear(input, self.weight_fake_quant(self.weight), self.bias)
        return _apply(self.output_fake_quant, out)

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{cls.__module__}.{cls.__name__}.from_float takes an nn.Linear, got {type(mod).__name__}")
        qat = cls(mod.in_features, mod.out_features, bias=mod.bias is not None,
                  qconfig=getattr(mod, "qconfig", None))
        return _copy_weight_and_bias(qat, mod, detach=False)

    def to_float(self):
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        return _copy_weight_and_bias(linear, self, detach=True).train(self.training)


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


class _FoldedBatchNorm2d(nn.BatchNorm2d):
    """The BN inside :class:`ConvBn2d`. It never carries a qconfig, so torch.ao's ``prepare`` and
    ``convert``, which walk into children of modules that are not theirs, leave it alone (it is
    folded into the conv)."""

    @property
    def qconfig(self):
        return None

    @qconfig.setter
    def qconfig(self, value):
        pass


class ConvBn2d(nn.Conv2d):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBn2d`` (Conv2d + BatchNorm2d, weight fake-quantized
    after folding BN into it), with ``fold_mode`` (``"running"`` or ``"batch"``).

    Eval mode and ``freeze_bn_stats()`` fold with the running statistics in both modes.
    ``gamma = 0`` gives no NaN (``torch.ao``'s module does, pytorch#77434).
    """

    _version = 2
    _FLOAT_CONV_MODULE = nn.Conv2d
    _FLOAT_BN_MODULE = nn.BatchNorm2d
    _FLOAT_RELU_MODULE = None
    _RELU = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=None, padding_mode="zeros", eps=1e-05, momentum=0.1, freeze_bn=False, qconfig=None,
                 *, fold_mode="running"):
        super().__init__(in_channels, out_channels, _pair(kernel_size), stride=_pair(stride),
                         padding=padding if isinstance(padding, str) else _pair(padding),
                         dilation=_pair(dilation), groups=groups, bias=False, padding_mode=padding_mode)
        self.qconfig = qconfig if qconfig is not None else _default_qconfig()
        self.fold_mode = _check_fold_mode(fold_mode)
        self.freeze_bn = freeze_bn if self.training else True
        self.bn = _FoldedBatchNorm2d(out_channels, eps, momentum, True, True)
        self.weight_fake_quant = _make_weight_fake_quant(self.qconfig, {})
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
    def _padding_pair(self):
        if isinstance(self.padding, str):
            return None
        return self.padding

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
            padding = (0, 0)
        else:
            padding = self._padding_pair()
        spec = _fused_weight_spec(self.weight_fake_quant) if padding is not None else None
        factor = self._exponential_average_factor()
        if spec is not None:
            out = conv_bn_fake_quant(
                input, self.weight, self.bias, self.bn.weight, self.bn.bias, self.bn.running_mean,
                self.bn.running_var, stride=self.stride, padding=padding, dilation=self.dilation,
                groups=self.groups, eps=self.bn.eps, momentum=factor, mode=self.fold_mode,
                training=self.bn.training, relu=self._RELU, **spec)
        else:
            out = self._forward_composite(input, self.padding if padding is None else padding, factor)
            if self._RELU:
                out = F.relu(out)
        return _apply(self.output_fake_quant, out)

    def _conv(self, input, weight, padding):
        return F.conv2d(input, weight, None, self.stride, padding, self.dilation, self.groups)

    def _forward_composite(self, x, padding, factor):
        """The op's math composed from PyTorch ops, for any weight fake-quantizer."""
        bn, w, b = self.bn, self.weight, self.bias
        shape = (1, -1, 1, 1)
        gamma, beta = bn.weight, bn.bias
        if not bn.training:  # eval or frozen BN: fold with the running statistics
            folded, folded_bias = self._running_fold(w, b)
            return self._conv(x, self.weight_fake_quant(folded), padding) + folded_bias.reshape(shape)
        if self.fold_mode == "running":
            sigma = torch.sqrt(bn.running_var + bn.eps)
            s = gamma / sigma
            s = torch.where(s == 0, torch.ones_like(s), s)  # gamma = 0: no NaN, y = beta there
            conv = self._conv(x, self.weight_fake_quant(w * s.reshape(-1, 1, 1, 1)), padding)
            conv = conv / s.reshape(shape)
            if b is not None:
                conv = conv + b.reshape(shape)
            return F.batch_norm(conv, bn.running_mean, bn.running_var, gamma, beta, True, factor, bn.eps)
        # batch: forward fused with the batch statistics, backward unfused (docs/convbn.md)
        acc = torch.promote_types(x.dtype, torch.float32)  # statistics in float32 at least
        with torch.no_grad():
            z0 = self._conv(x, w, padding).to(acc)
            var, mean = torch.var_mean(z0, dim=(0, 2, 3), unbiased=False)
            n = z0.numel() // z0.size(1)
            bn.running_mean.mul_(1 - factor).add_(factor * (mean + (b.to(acc) if b is not None else 0)))
            bn.running_var.mul_(1 - factor).add_(factor * var * (n / max(n - 1, 1)))
            sigma = torch.sqrt(var + bn.eps)
            k = (gamma.to(acc) / sigma).reshape(-1, 1, 1, 1)
        folded = (w.detach().to(acc) * k).to(w.dtype)
        with torch.no_grad():
            wq = self.weight_fake_quant(folded)
            mask = _ste_mask(self.weight_fake_quant, folded)
            fused = self._conv(x, wq, padding) + (beta - gamma * mean / sigma).reshape(shape).to(x.dtype)
        z = self._conv(x, _STEMask.apply(w, mask), padding)
        if b is not None:
            z = z + b.reshape(shape)
        unfused = F.batch_norm(z, None, None, gamma, beta, True, 0.0, bn.eps)
        return unfused + (fused - unfused).detach()

    # ---- conversion ----
    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False, *, fold_mode="running"):
        """From ``torch.ao.nn.intrinsic.ConvBn2d`` (or any ``(Conv2d, BatchNorm2d[, ReLU])``
        sequence) carrying a ``qconfig``; shares its parameters, as torch.ao does."""
        try:
            conv, bn = mod[0], mod[1]
        except (TypeError, IndexError):
            conv = bn = None
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"{cls.__module__}.{cls.__name__}.from_float takes a (Conv2d, BatchNorm2d"
                            f"{', ReLU' if cls._RELU else ''}) sequence such as torch.ao.nn.intrinsic."
                            f"{'ConvBnReLU2d' if cls._RELU else 'ConvBn2d'}, got {type(mod).__name__}")
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
        return w * s.to(w.dtype if w.dtype != torch.float64 else torch.float64).reshape(-1, 1, 1, 1), \
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
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, True, self.padding_mode)
        conv.weight, conv.bias = self.folded_weight_and_bias()
        conv.train(self.training)
        if self._RELU:
            nni, _ = _torch_ao()
            seq = nni.ConvReLU2d(conv, nn.ReLU()) if nni is not None else nn.Sequential(conv, nn.ReLU())
            seq.train(self.training)
            return seq
        return conv

    def _folded_conv(self):
        """A plain Conv2d with the folded weight that still carries this module's fake-quantizers
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


class ConvBnReLU2d(ConvBn2d):
    """Drop-in for ``torch.ao.nn.intrinsic.qat.ConvBnReLU2d``: :class:`ConvBn2d` then ReLU (fused into
    the op's epilogue on the fast path)."""

    _FLOAT_RELU_MODULE = nn.ReLU
    _RELU = True


def freeze_bn_stats(mod):
    """``model.apply(freeze_bn_stats)`` for our ConvBn modules and torch.ao's (whose own function
    matches exact types only)."""
    if isinstance(mod, ConvBn2d):
        mod.freeze_bn_stats()
    else:
        _, nniqat = _torch_ao()
        if nniqat is not None:
            nniqat.freeze_bn_stats(mod)


def update_bn_stats(mod):
    """``model.apply(update_bn_stats)`` for our ConvBn modules and torch.ao's."""
    if isinstance(mod, ConvBn2d):
        mod.update_bn_stats()
    else:
        _, nniqat = _torch_ao()
        if nniqat is not None:
            nniqat.update_bn_stats(mod)


def get_qat_module_mappings():
    """``prepare_qat(model, mapping=get_qat_module_mappings())`` swaps float (and torch.ao
    fused) modules for ours."""
    mapping = {nn.Conv2d: Conv2d, nn.Linear: Linear}
    nni, _ = _torch_ao()
    if nni is not None:
        mapping.update({nni.ConvBn2d: ConvBn2d, nni.ConvBnReLU2d: ConvBnReLU2d})
    return mapping


class _FromFolded:
    """Mapping entry for torch.ao ``convert``: folds BN, then hands the folded conv to ``target``."""

    def __init__(self, target):
        self.target = target

    def from_float(self, mod, use_precomputed_fake_quant=False):
        return self.target.from_float(mod._folded_conv(), use_precomputed_fake_quant=use_precomputed_fake_quant)


def get_quantized_module_mappings():
    """``torch.ao.quantization.convert(model, mapping=get_quantized_module_mappings())``: our QAT
    modules to torch.ao's quantized modules (BN folded with the running statistics)."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

    mapping = dict(get_default_static_quant_module_mappings())
    mapping.update({
        Conv2d: nnq.Conv2d,
        Linear: nnq.Linear,
        ConvBn2d: _FromFolded(nnq.Conv2d),
        ConvBnReLU2d: _FromFolded(nniq.ConvReLU2d),
    })
    return mapping
