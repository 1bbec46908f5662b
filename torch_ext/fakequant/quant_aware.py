"""PaddleSlim-style two-call QAT: ``quant_aware(model, config)`` and ``convert(model)``.

PaddleSlim rewrites a static program: it inserts trainable quant-dequant ops on the weights
and the inputs of the ops named in ``quantize_op_types``, and ``convert`` freezes the trained
program. Here PyTorch module types stand in for Paddle op types (``conv2d`` /
``depthwise_conv2d``: ``nn.Conv1d`` / ``nn.Conv2d``; ``mul``: ``nn.Linear``; ``elementwise_add``
and ``pool2d``: additions and 2-D pooling found with ``torch.fx``; and, where
:mod:`fakequant.nn.qat` has a QAT module for them, ``conv3d``, ``conv2d_transpose``,
``conv3d_transpose`` and ``lookup_table``), and the rewrite swaps modules for
:mod:`fakequant.nn.qat` ones. Decisions are in docs/qat.md.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import _graph
from .fuse import unproven_warning
from .nn import (
    AbsMaxWeightFakeQuantize,
    FakeQuantizeBase,
    MovingAverageAbsMaxFakeQuantize,
    RangeAbsMaxFakeQuantize,
    qat,
)

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
QUANTIZE_OP_TYPES = ("conv2d", "depthwise_conv2d", "mul", "elementwise_add", "pool2d", "conv3d", "conv2d_transpose",
                     "conv3d_transpose", "lookup_table")
DTYPES = ("int8",)  # PaddleSlim's VALID_DTYPES
ROUNDINGS = ("half_away", "half_even")

#: PaddleSlim's ``quant_config_default``, then the keys linger users know and ours.
QUANT_CONFIG_DEFAULT = {
    "weight_quantize_type": "abs_max",
    "activation_quantize_type": "abs_max",
    "weight_bits": 8,
    "activation_bits": 8,
    "not_quant_pattern": ["skip_quant"],
    "quantize_op_types": list(QUANTIZE_OP_TYPES),
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

#: The float layers the facade quantizes: Paddle op type (``None``: decided by ``_op_type``),
#: the weight's output-channel axis (``channel_wise_abs_max``), and whether the input is a
#: float activation (an embedding's input is indices).
_LAYERS = {
    nn.Conv1d: (None, 0, True),  # Paddle runs conv1d as conv2d
    nn.Conv2d: (None, 0, True),
    nn.Conv3d: ("conv3d", 0, True),
    nn.ConvTranspose1d: ("conv2d_transpose", 1, True),  # weight [in, out / groups, k...]
    nn.ConvTranspose2d: ("conv2d_transpose", 1, True),
    nn.ConvTranspose3d: ("conv3d_transpose", 1, True),
    nn.Linear: ("mul", 0, True),
    nn.Embedding: ("lookup_table", 0, False),
    nn.EmbeddingBag: ("lookup_table", 0, False),
}
_RELU_FED_OPTION = {nn.Linear: "ahead_linear_relu"}  # every other layer with an input: ahead_conv_relu

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
    # The op's range: 0 keeps only the current batch's abs-max; 1 would never move the scale.
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
        _fail("moving_rate", r, "a float in [0, 1)")
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

    bin_cnt = 2 ** (bits - 1) - 1
    return AbsMaxWeightFakeQuantize(quant_min=-bin_cnt, quant_max=bin_cnt, ch_axis=ch_axis, rounding=rounding)


def _weight_fake_quant(cfg, ch_axis=0):

    kind, bits, rounding = cfg["weight_quantize_type"], cfg["weight_bits"], cfg["rounding"]
    if kind == "abs_max":
        return _abs_max_fq(bits, None, rounding)
    if kind == "channel_wise_abs_max":
        return _abs_max_fq(bits, ch_axis, rounding)
    if kind == "range_abs_max":
        return RangeAbsMaxFakeQuantize(bits=bits, window_size=cfg["window_size"], rounding=rounding)
    return MovingAverageAbsMaxFakeQuantize(bits=bits, moving_rate=cfg["moving_rate"], rounding=rounding)


def _activation_fake_quant(cfg, ahead_relu=False):

    kind, bits, rounding = cfg["activation_quantize_type"], cfg["activation_bits"], cfg["rounding"]
    if kind == "abs_max":  # stateless: the ReLU goes in front of it
        fq = _abs_max_fq(bits, None, rounding)
        return AheadReLU(fq) if ahead_relu else fq
    if kind == "range_abs_max":
        return RangeAbsMaxFakeQuantize(bits=bits, window_size=cfg["window_size"], rounding=rounding,
                                       ahead_relu=ahead_relu)
    return MovingAverageAbsMaxFakeQuantize(bits=bits, moving_rate=cfg["moving_rate"], rounding=rounding,
                                           ahead_relu=ahead_relu)


class FakeQuantizerFactory:
    """A qconfig field of the facade's QAT modules: called with any keyword arguments, builds
    the weight (``role="weight"``, per channel along ``ch_axis``) or activation quantizer that
    ``cfg`` asks for. A class rather than a closure so that a QAT model pickles (``torch.save``
    of the whole model, ``torch.multiprocessing`` spawn)."""

    def __init__(self, cfg: dict, role: str, ch_axis: int = 0):
        if role not in ("weight", "activation"):
            raise ValueError(f"FakeQuantizerFactory: role must be 'weight' or 'activation', got {role!r}")
        self.cfg, self.role, self.ch_axis = copy.deepcopy(cfg), role, ch_axis

    def __call__(self, ch_axis=None, **_):
        # ch_axis: a QAT layer may ask for its weight's output-channel axis (transposed convs: 1)
        if self.role == "weight":
            return _weight_fake_quant(self.cfg, self.ch_axis if ch_axis is None else ch_axis)
        return _activation_fake_quant(self.cfg)

    def __repr__(self):
        kind = self.cfg[f"{self.role}_quantize_type"]
        return f"FakeQuantizerFactory({self.role}: {kind}, {self.cfg[self.role + '_bits']} bits)"


def _op_type(module):
    """The Paddle op type a float layer runs as (``None`` for other modules)."""
    layer = _LAYERS.get(type(module))
    if layer is None:
        return None
    if layer[0] is not None:
        return layer[0]
    return "depthwise_conv2d" if module.groups > 1 and module.groups == module.in_channels else "conv2d"


def _skipped(name, patterns):
    return any(p in name for p in patterns)


def _qat_classes():
    """``{float layer type: QAT class}`` for the layers :mod:`fakequant.nn.qat` provides."""
    mapping = qat.get_qat_module_mappings()
    return {t: mapping[t] for t in _LAYERS if t in mapping}


def _convbn_classes():
    """``{conv type: (ConvBn class, ConvBnReLU class)}`` for the dimensions :mod:`fakequant.nn.qat`
    provides."""
    found = {}
    for conv, _ in _graph.CONV_BN:
        d = conv.__name__[-2]
        pair = getattr(qat, f"ConvBn{d}d", None), getattr(qat, f"ConvBnReLU{d}d", None)
        if all(pair):
            found[conv] = pair
    return found


def _qat_layer_types():
    """Every QAT layer class :func:`convert` freezes."""
    types = {qat.Conv2d, qat.Linear, qat.ConvBn2d, *_qat_classes().values()}
    for pair in _convbn_classes().values():
        types.update(pair)
    return tuple(t for t in types if isinstance(t, type))


def _float_layers_left(model, skip, types):
    """``(name, type name)`` of every module still owning a weight of 2 or more dims that the
    rewrite did not swap and the config did not leave out on purpose (not_quant_pattern,
    quantize_op_types): they stay float. Norm layers (1-D weights) are not listed."""

    done = _qat_layer_types() + (FakeQuantizeBase, AheadReLU)
    left, covered = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in covered):
            continue
        op = _op_type(module)
        if isinstance(module, done) or _skipped(name, skip) or (op is not None and op not in types):
            covered.append(name)
        elif any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            left.append((name, type(module).__name__))
            covered.append(name)
    return left


def quant_aware(model: nn.Module, config: dict | None = None, inplace: bool = False) -> nn.Module:
    """Turn a float model into a QAT model, PaddleSlim's way (``QUANT_CONFIG_DEFAULT`` for the keys).

    - ``nn.Conv1d`` / ``nn.Conv2d`` (``conv2d``, or ``depthwise_conv2d`` when ``groups ==
      in_channels > 1``) and ``nn.Linear`` (``mul``) become :mod:`fakequant.nn.qat` modules with
      the weight quantizer of ``weight_quantize_type`` and, unless ``quant_weight_only``, an
      input quantizer of ``activation_quantize_type`` (``*_bits`` bits, symmetric, zero point
      0); so do ``nn.Conv3d`` (``conv3d``), ``nn.ConvTranspose1d/2d`` (``conv2d_transpose``,
      per-channel axis 1), ``nn.ConvTranspose3d`` (``conv3d_transpose``) and ``nn.Embedding`` /
      ``nn.EmbeddingBag`` (``lookup_table``, weight only) where :mod:`fakequant.nn.qat` has a
      QAT module for them (``get_qat_module_mappings()``).
    - ``fuse_bn``: a ``Conv1d/2d/3d`` followed by its ``BatchNorm1d/2d/3d`` (and an ``nn.ReLU``)
      becomes :class:`fakequant.nn.qat.ConvBn2d` / ``ConvBnReLU2d`` (and the 1-D / 3-D ones where
      provided) in ``fold_mode`` (``"batch"``: forward fused, backward unfused, as linger); the
      BN and ReLU become ``nn.Identity``. Only pairs a graph proves are fused (see
      :func:`fakequant.fuse_conv_bn`); BatchNorm layers no graph covers get a warning.
    - ``ahead_conv_relu`` / ``ahead_bn_relu`` / ``ahead_linear_relu`` (linger's AHEAD_RELU): a
      conv / conv+BN / linear whose output feeds a ReLU gets an output quantizer whose range
      covers only the positive side.
    - ``elementwise_add`` / ``pool2d``: quant-dequant on the inputs of additions and 2-D
      pooling, inserted with ``torch.fx`` (the result is then an ``fx.GraphModule``); a model
      that does not trace gets a warning saying those inputs stay float.
    - ``not_quant_pattern``: modules whose qualified name contains one of the strings stay float.
    - Layers with a weight that nothing here quantizes (``nn.MultiheadAttention``, ``nn.LSTM``,
      a layer type without a QAT module, ...) stay float, listed in one ``UserWarning``.
    Returns the QAT model (a copy unless ``inplace``); it pickles (``torch.save(model)``).
    Unknown keys or values raise ``ValueError`` listing what is accepted.
    """
    cfg = _check_config(config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"quant_aware: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    types, skip = set(cfg["quantize_op_types"]), cfg["not_quant_pattern"]
    patterns = _graph.find_patterns(model)
    with_input = not cfg["quant_weight_only"]
    qat_classes, convbn_classes = _qat_classes(), _convbn_classes()
    refused, inputs_float = {}, []

    def qconfig_for(layer_type):
        return QConfig(activation=FakeQuantizerFactory(cfg, "activation"),
                       weight=FakeQuantizerFactory(cfg, "weight", _LAYERS[layer_type][1]))

    def attach(module, name, ahead, float_input):
        if hasattr(module, "input_fake_quant"):
            module.input_fake_quant = _activation_fake_quant(cfg) if with_input and float_input else None
            if ahead:
                module.output_fake_quant = _activation_fake_quant(cfg, ahead_relu=True)
        elif with_input and float_input:
            inputs_float.append(name)  # a QAT class without the facade's quantizer slots
        module.train(model.training)
        _graph.set_submodule(model, name, module)

    if cfg["fuse_bn"]:
        if patterns.unproven:
            warnings.warn(unproven_warning("quant_aware", model, patterns), stacklevel=2)
        for chain in patterns.chains:
            conv, bn = model.get_submodule(chain.conv), model.get_submodule(chain.bn)
            if type(conv) not in convbn_classes or _op_type(conv) not in types or _skipped(chain.conv, skip):
                continue
            pair = nn.Sequential(conv, bn)
            pair.qconfig = qconfig_for(type(conv))
            cls = convbn_classes[type(conv)][chain.relu is not None]
            attach(cls.from_float(pair, fold_mode=cfg["fold_mode"]), chain.conv,
                   cfg["ahead_bn_relu"] and chain.relu_follows, True)
            _graph.set_submodule(model, chain.bn, nn.Identity())
            if chain.relu is not None:
                _graph.set_submodule(model, chain.relu, nn.Identity())

    for name, module in list(model.named_modules()):
        if not name or _skipped(name, skip) or type(module) not in qat_classes or _op_type(module) not in types:
            continue
        _, _, float_input = _LAYERS[type(module)]
        module.qconfig = qconfig_for(type(module))
        try:
            swapped = qat_classes[type(module)].from_float(module)
        except (AssertionError, TypeError, ValueError) as e:  # a QAT class that refuses Paddle's quantizers
            refused[name] = (f"{type(module).__name__}: {qat_classes[type(module)].__name__}.from_float refused "
                             f"Paddle's quantizers: {e}")
            continue
        finally:
            del module.qconfig
        ahead = cfg[_RELU_FED_OPTION.get(type(module), "ahead_conv_relu")] and name in patterns.relu_fed
        attach(swapped, name, ahead and float_input, float_input)

    left = [f"{name} ({refused.get(name, kind)})" for name, kind in _float_layers_left(model, skip, types)]
    if left:
        warnings.warn(f"quant_aware: nothing here quantizes these layers; they stay float: {'; '.join(left)}",
                      stacklevel=2)
    if inputs_float:
        warnings.warn(f"quant_aware: these QAT layers have no input quantizer slot; their inputs stay float: "
                      f"{inputs_float}", stacklevel=2)

    if with_input and types & {"elementwise_add", "pool2d"}:
        model = _quantize_add_and_pool_inputs(model, cfg, types, skip)
    return model


def _leaf_types():

    return _qat_layer_types() + (AheadReLU, FakeQuantizeBase)


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


# ---- convert ----

def _fake_quant_modules(model):
    return [m for m in model.modules() if hasattr(m, "disable_observer") and hasattr(m, "calculate_qparams")]


def _is_dynamic(fq):
    """An abs-max quantizer that observes: every call quantizes with the scale of its own input
    (Paddle's ``fake_quantize_abs_max``), in QAT eval as after ``convert``."""

    return isinstance(fq, AbsMaxWeightFakeQuantize) and fq._observer_on


def _int_dtype(quant_min, quant_max):
    if quant_min >= -128 and quant_max <= 127:
        return torch.int8
    return torch.int16 if quant_min >= -(2 ** 15) and quant_max < 2 ** 15 else torch.int32


def _activation_entry(fq):
    """What a runtime needs to quantize an activation as ``fq`` does: ``q = clamp(round(x * (1 /
    scale)) + zero_point, quant_min, quant_max)`` (``relu(x)`` first when ``relu_first``); a
    ``dynamic`` entry takes ``scale = max(max|x| / ((quant_max - quant_min) / 2), eps)`` from each
    input."""
    if fq is None:
        return None
    relu_first = isinstance(fq, AheadReLU)
    if relu_first:
        fq = fq.fake_quant
    relu_first = relu_first or bool(getattr(fq, "ahead_relu", False))
    dynamic = _is_dynamic(fq)
    if dynamic:
        scale, zero_point = None, torch.zeros((), dtype=torch.int32)
    else:
        scale, zero_point = fq.calculate_qparams()
        scale, zero_point = scale.detach().to(torch.float32), zero_point.detach().to(torch.int32)
        if scale.numel() == 1:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
    axis = getattr(fq, "ch_axis", None)
    per_channel = getattr(fq, "is_per_channel", False)
    return {"scale": scale, "zero_point": zero_point, "quant_min": int(fq.quant_min), "quant_max": int(fq.quant_max),
            "dtype": _int_dtype(fq.quant_min, fq.quant_max), "axis": axis if per_channel else None,
            "rounding": getattr(fq, "rounding", "half_even"), "dynamic": dynamic,
            "eps": float(getattr(fq, "eps", 0.0)) if dynamic else None, "relu_first": relu_first}


def _torch_layer_class(cls):
    """The torch.nn layer class a QAT class derives from (``nn.Conv2d`` for ``ConvBn2d``)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.nn.modules") and klass not in (nn.Module,):
            return klass
    raise TypeError(f"convert: {cls.__name__} derives from no torch.nn layer")


def _float_layer(module, bias):
    """A float layer of ``module``'s torch.nn class and arguments, the functional op it computes and
    that op's keyword arguments."""
    m, base = module, _torch_layer_class(type(module))
    conv = nn.modules.conv
    if issubclass(base, conv._ConvTransposeNd):
        core = base(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.output_padding, m.groups,
                    bias, m.dilation, m.padding_mode)
        args = {"stride": m.stride, "padding": m.padding, "output_padding": m.output_padding, "groups": m.groups,
                "dilation": m.dilation}
        op = f"conv_transpose{len(m.kernel_size)}d"
    elif issubclass(base, conv._ConvNd):
        core = base(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, bias,
                    m.padding_mode)
        args = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
        op = f"conv{len(m.kernel_size)}d"
    elif issubclass(base, nn.Linear):
        core, args, op = nn.Linear(m.in_features, m.out_features, bias), {}, "linear"
    elif issubclass(base, nn.EmbeddingBag):
        core = base(m.num_embeddings, m.embedding_dim, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.mode,
                    m.sparse, include_last_offset=m.include_last_offset, padding_idx=m.padding_idx)
        args = {"max_norm": m.max_norm, "norm_type": m.norm_type, "scale_grad_by_freq": m.scale_grad_by_freq,
                "mode": m.mode, "sparse": m.sparse, "include_last_offset": m.include_last_offset,
                "padding_idx": m.padding_idx}
        op = "embedding_bag"
    elif issubclass(base, nn.Embedding):
        core = base(m.num_embeddings, m.embedding_dim, m.padding_idx, m.max_norm, m.norm_type, m.scale_grad_by_freq,
                    m.sparse)
        args = {"padding_idx": m.padding_idx, "max_norm": m.max_norm, "norm_type": m.norm_type,
                "scale_grad_by_freq": m.scale_grad_by_freq, "sparse": m.sparse}
        op = "embedding"
    else:
        raise TypeError(f"convert: no float layer for {type(module).__name__}")
    if isinstance(core, conv._ConvNd) and m.padding_mode != "zeros":
        args["padding_mode"] = m.padding_mode  # pad with F.pad(..., mode) before the op, padding 0
    return core, op, args


def _freeze(module):
    """The float module a trained QAT module becomes: BN folded with the running statistics,
    weight replaced by its fake-quantized value; plus its int8 payload entry."""
    with torch.no_grad():
        if isinstance(getattr(module, "bn", None), nn.modules.batchnorm._BatchNorm):
            fold = getattr(module, "eval_folded_weight_and_bias", None) or module.folded_weight_and_bias
            weight, bias = fold()
        else:
            weight = module.weight.detach()
            bias = getattr(module, "bias", None)
            bias = None if bias is None else bias.detach()
        fq = module.weight_fake_quant
        frozen_weight = fq(weight)
        scale, zero_point = fq.calculate_qparams()
    core, op, args = _float_layer(module, bias is not None)
    core.weight = nn.Parameter(frozen_weight.clone(), requires_grad=False)
    if bias is not None:
        core.bias = nn.Parameter(bias.clone(), requires_grad=False)
    relu = bool(getattr(module, "_RELU", False))
    input_fq, output_fq = getattr(module, "input_fake_quant", None), getattr(module, "output_fake_quant", None)
    parts = [input_fq, core, nn.ReLU() if relu else None, output_fq]
    parts = [p for p in parts if p is not None]
    frozen = parts[0] if len(parts) == 1 else nn.Sequential(*parts)

    axis = getattr(fq, "ch_axis", None) if scale.numel() > 1 else None
    shape = [1] * weight.dim()
    if axis is not None:
        shape[axis] = -1
    scale32 = scale.detach().to(torch.float32)
    q = torch.round(frozen_weight.float() / scale32.reshape(shape)) + zero_point.reshape(shape)
    q = q.clamp(fq.quant_min, fq.quant_max)
    entry = {"weight": q.to(_int_dtype(fq.quant_min, fq.quant_max)),
             "scale": scale32.reshape(-1) if axis is not None else scale32.reshape(()),
             "zero_point": zero_point.detach().to(torch.int32), "axis": axis,
             "quant_min": fq.quant_min, "quant_max": fq.quant_max,
             "bias": None if bias is None else bias.detach().clone(),
             "op": op, "args": args, "relu": relu,
             "input": _activation_entry(input_fq), "output": _activation_entry(output_fq)}
    return frozen.eval(), entry


def _standalone_activation_entries(model, layer_names):
    """Entries for the activation quantizers outside the frozen layers (the inputs of additions
    and pooling): ``{"input": ..., "producer": fx node name, "consumers": [fx node names]}``."""

    entries, covered = {}, list(layer_names)
    if "" in covered:  # the model itself was a QAT layer
        return entries
    calls = {}
    if isinstance(model, fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_module" and node.args and isinstance(node.args[0], fx.Node):
                calls[node.target] = (node.args[0].name, [u.name for u in node.users])
    for name, module in model.named_modules():
        if not name or any(name == p or name.startswith(p + ".") for p in covered):
            continue
        if isinstance(module, (FakeQuantizeBase, AheadReLU)):
            producer, consumers = calls.get(name, (None, []))
            entries[name] = {"input": _activation_entry(module), "producer": producer, "consumers": consumers}
            covered.append(name)
    return entries


def convert(model: nn.Module, save_int8: bool = False, inplace: bool = False):
    """Freeze a trained QAT model for inference, PaddleSlim's way.

    Every :mod:`fakequant.nn.qat` module becomes a plain float layer (``Conv2d``, ``Linear``, ...)
    whose weight holds its fake-quantized value (BN folded in with the running statistics
    first), kept with its activation quantizers. The result is in eval mode and gives the QAT
    model's eval outputs on every input: quantizers with a running scale
    (``moving_average_abs_max``, ``range_abs_max``) stop observing and keep their trained scale;
    ``abs_max`` activations stay dynamic (each input is quantized with its own abs-max, as in
    QAT eval and Paddle's ``fake_quantize_abs_max``).

    With ``save_int8`` also returns the int8 payload ``{name: entry}`` (docs/qat.md): per layer
    ``"weight"`` (int8), ``"scale"``, ``"zero_point"``, ``"axis"``, ``"quant_min"``,
    ``"quant_max"``, ``"bias"`` (float), ``"op"`` / ``"args"`` (the ``torch.nn.functional`` call
    it computes), ``"relu"``, and ``"input"`` / ``"output"`` activation entries (``None`` where
    not quantized); per standalone activation quantizer (``quant_dequant_i_j``: input ``j`` of the
    ``i``-th addition or pooling) ``{"input": ..., "producer": ..., "consumers": [...]}``, the
    ``torch.fx`` node names of the value it quantizes and of the nodes it feeds.
    An activation entry has ``"scale"`` (``None`` when ``"dynamic"``), ``"zero_point"``,
    ``"quant_min"``, ``"quant_max"``, ``"dtype"``, ``"axis"``, ``"rounding"``, ``"eps"`` and
    ``"relu_first"``. ``weight * scale`` (per channel along ``axis``) is the frozen float weight.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(save_int8, bool):
        raise TypeError(f"convert: save_int8 must be True or False, got {save_int8!r}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    int8 = {}
    layer_types = _qat_layer_types()
    for name, module in list(model.named_modules()):
        if isinstance(module, layer_types):
            frozen, entry = _freeze(module)
            if name:
                _graph.set_submodule(model, name, frozen)
            else:
                model = frozen
            int8[name] = entry
    for fq in _fake_quant_modules(model):
        if not _is_dynamic(fq):
            fq.disable_observer()
    if not save_int8:
        return model
    int8.update(_standalone_activation_entries(model, list(int8)))
    return model, int8
