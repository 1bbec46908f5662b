"""PaddleSlim-style two-call QAT: ``quant_aware(model, config)`` and ``convert(model)``.

PaddleSlim rewrites a static program: it inserts trainable quant-dequant ops on the weights
and the inputs of the ops named in ``quantize_op_types``, and ``convert`` freezes the trained
program. Here PyTorch module types stand in for Paddle op types (``conv2d`` /
``depthwise_conv2d``: ``nn.Conv2d``; ``mul``: ``nn.Linear``; ``elementwise_add`` and
``pool2d``: additions and 2-D pooling found with ``torch.fx``), and the rewrite swaps modules
for :mod:`fakequant.nn.qat` ones. Decisions are in docs/qat.md.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import _graph
from .nn import qat

__all__ = [
    "ACTIVATION_QUANTIZE_TYPES",
    "QUANTIZE_OP_TYPES",
    "QUANT_CONFIG_DEFAULT",
    "WEIGHT_QUANTIZE_TYPES",
    "convert",
    "quant_aware",
]

WEIGHT_QUANTIZE_TYPES = ("abs_max", "channel_wise_abs_max", "range_abs_max", "moving_average_abs_max")
ACTIVATION_QUANTIZE_TYPES = ("abs_max", "range_abs_max", "moving_average_abs_max")
QUANTIZE_OP_TYPES = ("conv2d", "depthwise_conv2d", "mul", "elementwise_add", "pool2d")
DTYPES = ("int8",)  # PaddleSlim's VALID_DTYPES
ROUNDINGS = ("half_away", "half_even")

#: PaddleSlim's ``quant_config_default``, then the keys linger users know and ours.
QUANT_CONFIG_DEFAULT = {
    "weight_quantize_type": "abs_max",
    "activation_quantize_type": "abs_max",
    "weight_bits": 8,
    "activation_bits": 8,
    "not_quant_pattern": ["skip_quant"],
    "quantize_op_types": ["conv2d", "depthwise_conv2d", "mul", "elementwise_add", "pool2d"],
    "dtype": "int8",
    "window_size": 10000,
    "moving_rate": 0.9,
    "quant_weight_only": False,
    # linger: conv + BN forward-fused / backward-unfused, AHEAD_RELU
    "fuse_bn": True,
    "ahead_conv_relu": False,
    "ahead_bn_relu": False,
    "ahead_linear_relu": False,
    # how BN folds into the weight while training (docs/convbn.md), and Paddle's rounding
    "fold_mode": "batch",
    "rounding": "half_away",
}

QConfig = qat.QConfig


def _fail(key, value, accepted):
    raise ValueError(f"quant_aware config: {key}={value!r} is not accepted; accepted: {accepted}")


def _check_config(config) -> dict:
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise TypeError(f"quant_aware: config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(QUANT_CONFIG_DEFAULT))
    if unknown:
        raise ValueError(f"quant_aware config: unknown key(s) {unknown}; accepted keys: {list(QUANT_CONFIG_DEFAULT)}")
    cfg = copy.deepcopy(QUANT_CONFIG_DEFAULT)
    cfg.update(config)
    if cfg["weight_quantize_type"] not in WEIGHT_QUANTIZE_TYPES:
        _fail("weight_quantize_type", cfg["weight_quantize_type"], WEIGHT_QUANTIZE_TYPES)
    if cfg["activation_quantize_type"] not in ACTIVATION_QUANTIZE_TYPES:
        _fail("activation_quantize_type", cfg["activation_quantize_type"], ACTIVATION_QUANTIZE_TYPES)
    for key in ("weight_bits", "activation_bits"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 16:
            _fail(key, v, "an int from 2 to 16")
    patterns = cfg["not_quant_pattern"]
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        _fail("not_quant_pattern", cfg["not_quant_pattern"], "a str or a list of str")
    cfg["not_quant_pattern"] = [p for p in patterns if p]
    types = cfg["quantize_op_types"]
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, (list, tuple)) or any(t not in QUANTIZE_OP_TYPES for t in types):
        _fail("quantize_op_types", cfg["quantize_op_types"], f"a list drawn from {QUANTIZE_OP_TYPES}")
    cfg["quantize_op_types"] = list(types)
    if cfg["dtype"] not in DTYPES:
        _fail("dtype", cfg["dtype"], DTYPES)
    w = cfg["window_size"]
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        _fail("window_size", w, "an int >= 1")
    r = cfg["moving_rate"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
        _fail("moving_rate", r, "a float in (0, 1)")
    for key in ("quant_weight_only", "fuse_bn", "ahead_conv_relu", "ahead_bn_relu", "ahead_linear_relu"):
        if not isinstance(cfg[key], bool):
            _fail(key, cfg[key], "True or False")
    if cfg["fold_mode"] not in qat.FOLD_MODES:
        _fail("fold_mode", cfg["fold_mode"], qat.FOLD_MODES)
    if cfg["rounding"] not in ROUNDINGS:
        _fail("rounding", cfg["rounding"], ROUNDINGS)
    return cfg


class AheadReLU(nn.Module):
    """``fake_quant(relu(x))``: the range of a quantizer whose output feeds a ReLU covers only
    the positive side; after that ReLU the values are those of ``relu(fake_quant'(x))`` with
    ``fake_quant'`` calibrated on ``[0, max]`` (docs/qat.md)."""

    def __init__(self, fake_quant):
        super().__init__()
        self.fake_quant = fake_quant

    def forward(self, x):
        return self.fake_quant(F.relu(x))


def _abs_max_fq(bits, ch_axis, rounding):
    from .nn import AbsMaxWeightFakeQuantize

    bin_cnt = 2 ** (bits - 1) - 1
    return AbsMaxWeightFakeQuantize(quant_min=-bin_cnt, quant_max=bin_cnt, ch_axis=ch_axis, rounding=rounding)


def _weight_fake_quant(cfg):
    from .nn import MovingAverageAbsMaxFakeQuantize, RangeAbsMaxFakeQuantize

    kind, bits, rounding = cfg["weight_quantize_type"], cfg["weight_bits"], cfg["rounding"]
    if kind == "abs_max":
        return _abs_max_fq(bits, None, rounding)
    if kind == "channel_wise_abs_max":
        return _abs_max_fq(bits, 0, rounding)
    if kind == "range_abs_max":
        return RangeAbsMaxFakeQuantize(bits=bits, window_size=cfg["window_size"], rounding=rounding)
    return MovingAverageAbsMaxFakeQuantize(bits=bits, moving_rate=cfg["moving_rate"], rounding=rounding)


def _activation_fake_quant(cfg, ahead_relu=False):
    from .nn import MovingAverageAbsMaxFakeQuantize, RangeAbsMaxFakeQuantize

    kind, bits, rounding = cfg["activation_quantize_type"], cfg["activation_bits"], cfg["rounding"]
    if kind == "abs_max":  # stateless: the ReLU goes in front of it
        fq = _abs_max_fq(bits, None, rounding)
        return AheadReLU(fq) if ahead_relu else fq
    if kind == "range_abs_max":
        return RangeAbsMaxFakeQuantize(bits=bits, window_size=cfg["window_size"], rounding=rounding,
                                       ahead_relu=ahead_relu)
    return MovingAverageAbsMaxFakeQuantize(bits=bits, moving_rate=cfg["moving_rate"], rounding=rounding,
                                           ahead_relu=ahead_relu)


def _conv_op_type(conv):
    return "depthwise_conv2d" if conv.groups > 1 and conv.groups == conv.in_channels else "conv2d"


def _skipped(name, patterns):
    return any(p in name for p in patterns)


def quant_aware(model: nn.Module, config: dict | None = None, inplace: bool = False) -> nn.Module:
    """Turn a float model into a QAT model, PaddleSlim's way (``QUANT_CONFIG_DEFAULT`` for the keys).

    - ``nn.Conv2d`` (``conv2d``, or ``depthwise_conv2d`` when ``groups == in_channels > 1``)
      and ``nn.Linear`` (``mul``) become :mod:`fakequant.nn.qat` modules with the weight
      quantizer of ``weight_quantize_type`` and, unless ``quant_weight_only``, an input
      quantizer of ``activation_quantize_type`` (``*_bits`` bits, symmetric, zero point 0).
    - ``fuse_bn``: a ``Conv2d`` followed by its ``BatchNorm2d`` (and an ``nn.ReLU``) becomes
      :class:`fakequant.nn.qat.ConvBn2d` / ``ConvBnReLU2d`` in ``fold_mode`` (``"batch"``:
      forward fused, backward unfused, as linger); the BN and ReLU become ``nn.Identity``.
    - ``ahead_conv_relu`` / ``ahead_bn_relu`` / ``ahead_linear_relu`` (linger's AHEAD_RELU): a
      conv / conv+BN / linear whose output feeds a ReLU gets an output quantizer whose range
      covers only the positive side.
    - ``elementwise_add`` / ``pool2d``: quant-dequant on the inputs of additions and 2-D
      pooling, inserted with ``torch.fx`` (the result is then an ``fx.GraphModule``); a model
      that does not trace gets a warning saying those inputs stay float.
    - ``not_quant_pattern``: modules whose qualified name contains one of the strings stay float.
    Returns the QAT model (a copy unless ``inplace``). Unknown keys or values raise
    ``ValueError`` listing what is accepted.
    """
    cfg = _check_config(config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"quant_aware: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    types, skip = set(cfg["quantize_op_types"]), cfg["not_quant_pattern"]
    qconfig = QConfig(activation=lambda **_: _activation_fake_quant(cfg), weight=lambda **_: _weight_fake_quant(cfg))
    patterns = _graph.find_patterns(model)
    with_input = not cfg["quant_weight_only"]

    def attach(module, name, ahead):
        module.input_fake_quant = _activation_fake_quant(cfg) if with_input else None
        if ahead:
            module.output_fake_quant = _activation_fake_quant(cfg, ahead_relu=True)
        module.train(model.training)
        _graph.set_submodule(model, name, module)

    if cfg["fuse_bn"]:
        for chain in patterns.chains:
            conv, bn = model.get_submodule(chain.conv), model.get_submodule(chain.bn)
            if type(conv) is not nn.Conv2d or _conv_op_type(conv) not in types or _skipped(chain.conv, skip):
                continue
            pair = nn.Sequential(conv, bn)
            pair.qconfig = qconfig
            cls = qat.ConvBnReLU2d if chain.relu is not None else qat.ConvBn2d
            attach(cls.from_float(pair, fold_mode=cfg["fold_mode"]), chain.conv,
                   cfg["ahead_bn_relu"] and chain.relu_follows)
            _graph.set_submodule(model, chain.bn, nn.Identity())
            if chain.relu is not None:
                _graph.set_submodule(model, chain.relu, nn.Identity())

    for name, module in list(model.named_modules()):
        if not name or _skipped(name, skip):
            continue
        if type(module) is nn.Conv2d and _conv_op_type(module) in types:
            module.qconfig = qconfig
            attach(qat.Conv2d.from_float(module), name, cfg["ahead_conv_relu"] and name in patterns.relu_fed)
        elif type(module) is nn.Linear and "mul" in types:
            module.qconfig = qconfig
            attach(qat.Linear.from_float(module), name, cfg["ahead_linear_relu"] and name in patterns.relu_fed)
        else:
            continue
        del module.qconfig

    if with_input and types & {"elementwise_add", "pool2d"}:
        model = _quantize_add_and_pool_inputs(model, cfg, types, skip)
    return model


def _leaf_types():
    from .nn import FakeQuantizeBase

    return (qat.Conv2d, qat.Linear, qat.ConvBn2d, AheadReLU, FakeQuantizeBase)


_SHAPE_QUERIES = ("size", "dim", "numel", len, getattr)


def _node_scope(node):
    stack = node.meta.get("nn_module_stack") or {}
    return " ".join([node.name] + [str(v[0]) if isinstance(v, tuple) else str(k) for k, v in stack.items()])


def _quantize_add_and_pool_inputs(model, cfg, types, skip):
    gm, error = _graph.trace(model, leaf_types=_leaf_types())
    if gm is None:
        warnings.warn(f"quant_aware: the model does not trace with torch.fx ({error}); the inputs of "
                      f"'elementwise_add' and 'pool2d' are not quantized (conv2d/mul are)", stacklevel=3)
        return model
    modules = dict(gm.named_modules())
    targets = []
    for node in gm.graph.nodes:
        if _skipped(_node_scope(node), skip) or (node.op == "call_module" and _skipped(node.target, skip)):
            continue
        is_add = (node.op == "call_function" and node.target in _graph.ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if is_add and "elementwise_add" in types:
            args = node.args[:2]
            if len(args) == 2 and all(isinstance(a, torch.fx.Node) and a.target not in _SHAPE_QUERIES for a in args):
                targets.append((node, list(dict.fromkeys(args))))
        is_pool = (node.op == "call_module" and isinstance(modules.get(node.target), _graph.POOL_MODULES)) or (
            node.op == "call_function" and node.target in _graph.POOL_FUNCTIONS)
        if is_pool and "pool2d" in types and node.args and isinstance(node.args[0], torch.fx.Node):
            targets.append((node, [node.args[0]]))
    if not targets:
        return model
    for i, (node, args) in enumerate(targets):
        for j, arg in enumerate(args):
            name = f"quant_dequant_{i}_{j}"
            gm.add_submodule(name, _activation_fake_quant(cfg))
            with gm.graph.inserting_before(node):
                quantized = gm.graph.call_module(name, (arg,))
            node.replace_input_with(arg, quantized)
    gm.graph.lint()
    gm.recompile()
    gm.train(model.training)
    return gm


def _fake_quant_modules(model):
    return [m for m in model.modules() if hasattr(m, "disable_observer") and hasattr(m, "calculate_qparams")]


def _freeze(module):
    """The float module a trained QAT module becomes: BN folded with the running statistics,
    weight replaced by its fake-quantized value; plus the int8 weight and its qparams."""
    with torch.no_grad():
        if isinstance(module, qat.ConvBn2d):
            weight, bias = module.eval_folded_weight_and_bias()
        else:
            weight = module.weight.detach()
            bias = None if module.bias is None else module.bias.detach()
        fq = module.weight_fake_quant
        frozen_weight = fq(weight)
        scale, zero_point = fq.calculate_qparams()
    if isinstance(module, qat.Linear):
        core = nn.Linear(module.in_features, module.out_features, bias is not None)
    else:
        core = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups, bias is not None, module.padding_mode)
    core.weight = nn.Parameter(frozen_weight.clone(), requires_grad=False)
    if bias is not None:
        core.bias = nn.Parameter(bias.clone(), requires_grad=False)
    parts = [module.input_fake_quant, core]
    if isinstance(module, qat.ConvBnReLU2d):
        parts.append(nn.ReLU())
    parts.append(module.output_fake_quant)
    parts = [p for p in parts if p is not None]
    frozen = parts[0] if len(parts) == 1 else nn.Sequential(*parts)

    axis = getattr(fq, "ch_axis", None) if scale.numel() > 1 else None
    shape = [1] * weight.dim()
    if axis is not None:
        shape[axis] = -1
    scale32 = scale.detach().to(torch.float32)
    q = torch.round(frozen_weight.float() / scale32.reshape(shape)) + zero_point.reshape(shape)
    q = q.clamp(fq.quant_min, fq.quant_max)
    int_dtype = torch.int8 if fq.quant_min >= -128 and fq.quant_max <= 127 else torch.int16
    entry = {"weight": q.to(int_dtype), "scale": scale32.reshape(-1) if axis is not None else scale32.reshape(()),
             "zero_point": zero_point.detach().to(torch.int32), "axis": axis,
             "quant_min": fq.quant_min, "quant_max": fq.quant_max,
             "bias": None if bias is None else bias.detach().clone()}
    return frozen.eval(), entry


def convert(model: nn.Module, save_int8: bool = False, inplace: bool = False):
    """Freeze a trained QAT model for inference, PaddleSlim's way.

    Every :mod:`fakequant.nn.qat` module becomes a plain float ``Conv2d`` / ``Linear`` whose
    weight holds its fake-quantized value (BN folded in with the running statistics first),
    kept with its activation quantizers, which stop observing and use their trained scales.
    The result is in eval mode and gives the QAT model's eval outputs. With ``save_int8`` also
    returns ``{module name: {"weight": int8 tensor, "scale", "zero_point", "axis",
    "quant_min", "quant_max", "bias"}}``, ``weight * scale`` (per channel along ``axis``)
    being the frozen float weight.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(save_int8, bool):
        raise TypeError(f"convert: save_int8 must be True or False, got {save_int8!r}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    int8 = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, (qat.Conv2d, qat.Linear, qat.ConvBn2d)):
            frozen, entry = _freeze(module)
            if name:
                _graph.set_submodule(model, name, frozen)
            else:
                model = frozen
            int8[name] = entry
    for fq in _fake_quant_modules(model):
        fq.disable_observer()
    return (model, int8) if save_int8 else model
