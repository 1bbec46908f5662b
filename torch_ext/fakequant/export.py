"""Deploying fakequant models: ONNX lowerings of the ops for both of torch.onnx's exporters, and a
thin ``to_onnx`` wrapper of ``torch.onnx.export`` (docs/deploy.md).

The ops lower to standard ONNX (default domain, opset 18): a quant-dequant with known qparams
becomes ``QuantizeLinear`` + ``DequantizeLinear`` (per tensor, or per axis), so a runtime sees the
quantization points it fuses into integer kernels. What the lowering does, per op:

* ``fake_quant_per_tensor`` / ``fake_quant_per_channel`` (integer zero point),
  ``fake_quant_learnable_per_{tensor,channel}`` (the zero point rounded half to even and clamped,
  as the op does): Q/DQ with the given scale and zero point.
* ``fake_quant_moving_average_abs_max`` / ``fake_quant_range_abs_max`` with ``training=False``:
  Q/DQ with the stored scale's step ``max(scale / bin_cnt, smallest normal)`` and zero point 0.
* ``fused_moving_avg_obs_fake_quant``: Q/DQ with the stored scale and zero point (per tensor or
  along ``axis``), selected by the ``fake_quant_on`` switch (``Where``); the observer must be off.
* ``fake_quant_weight_abs_max``, ``abs_max``, ``min_max``: the scale from ``ReduceMax(Abs(w))``
  (constant-folded for weights), then Q/DQ per axis.
* ``conv_bn_fake_quant`` with ``training=False``: the folded conv, its weight Q/DQ per output
  channel (the dynamo exporter gets it through ``to_onnx``'s eval form, below).
* ``fake_quant_per_group``: opset 21's blocked Q/DQ (int4 for [-8, 7]) at opset 21, else the same
  arithmetic in float ops; ``fake_quant_block`` FP8 with torchao's rule, per tensor or per row:
  opset 19's Q/DQ with a float8 type.

The integer type of a Q/DQ pair is uint8 for ranges within [0, 255], int8 within [-128, 127],
int16 / uint16 (opset 21) otherwise. A range narrower than its type (Paddle's [-127, 127], a
``reduce_range`` [0, 127], 4-bit [-7, 7]) adds a ``Clip`` between Q and DQ, in the integer
domain, so the values stay exact.

Rounding: ``QuantizeLinear`` rounds half to even and divides by the scale, while the ops multiply
by ``1 / scale`` and round half to even (``half_even``) or half away from zero (``half_away``, the
Paddle quantizers' default). An ONNX result therefore equals PyTorch's except where ``x / scale``
lies on (or within one float32 ulp of) a rounding tie: there it may differ by one quantization step
(tested on random data: at most one step, a tiny fraction of the elements).

What does not lower: stochastic rounding (no ONNX equivalent; export refuses it), an observer
still observing (a stateful update has no place in an inference graph: the modules raise an error
asking for ``eval()`` / ``disable_observer()`` when exported in that state), and the block formats
other than FP8 (MX, NVFP4, the int and ModelOpt rules of ``fake_quant_block``).

The ops that mutate state (the observers, ConvBN) reach the dynamo exporter wrapped in
``auto_functionalized``, which torch.onnx (2.13) cannot translate. The fakequant modules compute
their eval value with the non-mutating ops while being exported to ONNX, and ``to_onnx`` hands the
dynamo exporter a program in which any remaining direct call is replaced by its eval form.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
import torch

from .ops import _common  # noqa: F401  (loads the op library)

try:  # the dynamo exporter's "exporting now" flag (see onnx_exporting); imported here, not in a traced call
    from torch.onnx._internal.exporter import _flags as _onnx_flags
except ImportError:  # pragma: no cover - a torch whose exporter moved
    _onnx_flags = None

__all__ = ["OPSET", "exporting", "onnx_exporting", "onnx_translation_table", "register_onnx_symbolics", "to_onnx"]

#: The ONNX opset the lowerings target (``ReduceMax`` with axes as an input needs 18).
OPSET = 18

_TP = {"float": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "double": 11}
_SMALLEST_NORMAL = float(torch.finfo(torch.float32).tiny)


def exporting() -> bool:
    """True while torch.export / torch.onnx trace a model (the fakequant modules then take their
    non-mutating eval path, and refuse to export while observing)."""
    return bool(torch.compiler.is_exporting() or onnx_exporting())


def onnx_exporting() -> bool:
    """True while torch.onnx exports (either exporter). Also read from the exporter's own flag,
    which torch.export's strict mode traces as a constant where it folds
    ``torch.onnx.is_in_onnx_export()`` to False."""
    if _onnx_flags is not None and getattr(_onnx_flags, "_is_onnx_exporting", False):
        return True
    return torch.onnx.is_in_onnx_export()


def observing_error(module: torch.nn.Module) -> RuntimeError:
    """The error of a quantizer exported to ONNX while it still observes."""
    return RuntimeError(
        f"{type(module).__name__} is still observing (updating its statistics), which an ONNX inference graph "
        "cannot do: call model.eval() (the Paddle and abs-max quantizers stop observing in eval) and, for the "
        "moving-average min/max quantizers, which observe in eval too, "
        "model.apply(torch.ao.quantization.disable_observer); an unobserved Paddle quantizer needs one "
        "calibration batch first")


def _int_type(quant_min: int, quant_max: int, op: str) -> tuple[str, int, int]:
    """The ONNX integer type of a Q/DQ pair for [quant_min, quant_max] and that type's range."""
    for name, lo, hi in (("uint8", 0, 255), ("int8", -128, 127), ("uint16", 0, 65535), ("int16", -32768, 32767)):
        if lo <= quant_min and quant_max <= hi:
            return name, lo, hi
    raise ValueError(f"fakequant ONNX lowering of {op}: the range [{quant_min}, {quant_max}] fits no ONNX "
                     "QuantizeLinear type (int8, uint8, int16, uint16)")


def _check_rounding(rounding: str, op: str) -> None:
    if rounding == "stochastic":
        raise ValueError(f"fakequant ONNX lowering of {op}: rounding='stochastic' has no ONNX equivalent; "
                         "export a model that rounds deterministically ('half_even' or 'half_away')")


# ---------------------------------------------------------------------------------------
# One builder per exporter: the lowerings below are written once against this interface.


class _Legacy:
    """Emits nodes into the TorchScript exporter's graph."""

    def __init__(self, g):
        self.g = g
        self.opset = g.opset  # the export's opset_version (at most 20 for this exporter)

    def op(self, name, *inputs, outputs=1, **attrs):
        kw = {}
        for k, v in attrs.items():
            if isinstance(v, bool) or isinstance(v, int):
                kw[f"{k}_i"] = int(v)
            elif isinstance(v, float):
                kw[f"{k}_f"] = v
            elif isinstance(v, str):
                kw[f"{k}_s"] = v
            else:  # a list of ints: the same suffix
                kw[f"{k}_i"] = [int(i) for i in v]
        return self.g.op(name, *inputs, outputs=outputs, **kw)

    def const(self, value, dtype):
        return self.g.op("Constant", value_t=torch.tensor(np.asarray(value, dtype=dtype)))

    def rank(self, x):
        from torch.onnx import symbolic_helper

        return symbolic_helper._get_tensor_rank(x)

    def rank_shape(self, x):
        from torch.onnx import symbolic_helper

        return symbolic_helper._get_tensor_sizes(x)

    def dtype(self, x):
        return x.type().dtype() if x.type().scalarType() is not None else None


class _Script:
    """Emits nodes through onnxscript (the dynamo exporter's translation functions)."""

    def __init__(self):
        import onnxscript

        self.ops = onnxscript.opset18
        self.ir = onnxscript.ir
        # The graph's opset: the exporter's tracer records nodes at the opset it builds.
        from torch.onnx._internal.exporter import _core

        tracer = getattr(_core, "current_tracer", None)
        self.opset = getattr(getattr(tracer, "opset", None), "version", None) or OPSET
        for version in range(self.opset, OPSET, -1):  # the newest opset module onnxscript has, up to the graph's
            if hasattr(onnxscript, f"opset{version}"):
                self.ops = getattr(onnxscript, f"opset{version}")
                break

    def op(self, name, *inputs, outputs=1, **attrs):
        if outputs != 1:
            attrs["_num_outputs"] = outputs
        return getattr(self.ops, name)(*inputs, **attrs)

    def const(self, value, dtype):
        return self.ops.Constant(value=self.ir.tensor(np.asarray(value, dtype=dtype)))

    def rank(self, x):
        return None if x.shape is None else len(x.shape)

    def rank_shape(self, x):
        if x.shape is None or not all(isinstance(d, int) for d in x.shape):
            return None
        return list(x.shape)

    def dtype(self, x):
        return {1: torch.float32, 10: torch.float16, 16: torch.bfloat16}.get(int(x.dtype)) if x.dtype else None


# ---------------------------------------------------------------------------------------
# The lowerings


def _mask(b):
    # The clipped-STE mask: only a backward reads it, so no inference graph uses this output.
    return b.const(np.zeros((0,), np.uint8), np.uint8)


def _qdq(b, x, scale, zero_point, axis, quant_min, quant_max, op):
    """Q/DQ of x with float32 ``scale`` and integer ``zero_point`` (tensors: one element per tensor,
    [C] along ``axis``), values clamped to [quant_min, quant_max]."""
    name, lo, hi = _int_type(quant_min, quant_max, op)
    if name in ("int16", "uint16") and b.opset < 21:
        raise ValueError(f"fakequant ONNX lowering of {op}: [{quant_min}, {quant_max}] needs 16-bit Q/DQ, "
                         "opset_version >= 21 (dynamo exporter)")
    scale = b.op("Cast", scale, to=_TP["float"])
    zero_point = b.op("Cast", zero_point, to=_TP[name])
    if axis is None:  # per tensor: ONNX wants scalars
        empty = b.const(np.zeros((0,), np.int64), np.int64)
        scale, zero_point = b.op("Reshape", scale, empty), b.op("Reshape", zero_point, empty)
        q = b.op("QuantizeLinear", x, scale, zero_point)
    else:
        q = b.op("QuantizeLinear", x, scale, zero_point, axis=axis)
    if (quant_min, quant_max) != (lo, hi):
        # In the integer domain: exact, and scalar bounds whatever the axis. (ONNX Runtime has no
        # 16-bit Clip: those go through int32.)
        if name in ("int16", "uint16"):
            q32 = b.op("Clip", b.op("Cast", q, to=_TP["int32"]), b.const(quant_min, "int32"),
                       b.const(quant_max, "int32"))
            q = b.op("Cast", q32, to=_TP[name])
        else:
            q = b.op("Clip", q, b.const(quant_min, name), b.const(quant_max, name))
    if axis is None:
        return b.op("DequantizeLinear", q, scale, zero_point)
    return b.op("DequantizeLinear", q, scale, zero_point, axis=axis)


def _wrap_axis(b, x, axis):
    rank = b.rank(x)
    if axis < 0:
        if rank is None:
            raise ValueError("fakequant ONNX lowering: a negative axis needs the input's rank")
        axis += rank
    return axis, rank


def _amax_over_others(b, x, axis):
    """max|x| over every dimension but ``axis`` ([C]), or over all (0-d) when axis is None."""
    ax = b.op("Abs", x)
    if axis is None:
        return b.op("ReduceMax", ax, keepdims=0)
    axis, rank = _wrap_axis(b, x, axis)
    others = [d for d in range(rank) if d != axis]
    if not others:
        return ax
    return b.op("ReduceMax", ax, b.const(others, np.int64), keepdims=0)


def fake_quant_per_tensor(b, x, scale, zero_point, quant_min, quant_max, rounding="half_even", seed=None):
    _check_rounding(rounding, "fake_quant_per_tensor")
    return _qdq(b, x, scale, zero_point, None, quant_min, quant_max, "fake_quant_per_tensor"), _mask(b)


def fake_quant_per_channel(b, x, scale, zero_point, axis, quant_min, quant_max, rounding="half_even", seed=None,
                           zero_point_is_float=False):
    op = "fake_quant_per_channel"
    _check_rounding(rounding, op)
    axis, rank = _wrap_axis(b, x, axis)
    if not zero_point_is_float:
        return _qdq(b, x, scale, zero_point, axis, quant_min, quant_max, op), _mask(b)
    # A float zero point is added before rounding (ATen's rule), which QuantizeLinear cannot
    # express: the same arithmetic in float ops, clamp(round(x / s + zp)) - zp) * s.
    shape = [1] * rank
    shape[axis] = -1
    shape = b.const(shape, np.int64)
    s, zp = b.op("Reshape", scale, shape), b.op("Reshape", zero_point, shape)
    q = b.op("Round", b.op("Add", b.op("Div", x, s), zp))
    q = b.op("Clip", q, b.const(float(quant_min), np.float32), b.const(float(quant_max), np.float32))
    return b.op("Mul", b.op("Sub", q, zp), s), _mask(b)


def _learnable_zero_point(b, zero_point, quant_min, quant_max):
    # The op's zero point: nearbyint (ONNX Round is half to even too), then clamp.
    return b.op("Clip", b.op("Round", zero_point), b.const(float(quant_min), np.float32),
                b.const(float(quant_max), np.float32))


def fake_quant_learnable_per_tensor(b, x, scale, zero_point, quant_min, quant_max, grad_factor=1.0):
    zp = _learnable_zero_point(b, zero_point, quant_min, quant_max)
    return _qdq(b, x, scale, zp, None, quant_min, quant_max, "fake_quant_learnable_per_tensor")


def fake_quant_learnable_per_channel(b, x, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0):
    zp = _learnable_zero_point(b, zero_point, quant_min, quant_max)
    axis, _ = _wrap_axis(b, x, axis)
    return _qdq(b, x, scale, zp, axis, quant_min, quant_max, "fake_quant_learnable_per_channel")


def _abs_max_step(b, scale, bits):
    # max(scale / bin_cnt, smallest normal) in float32: the op's abs_max_step.
    bin_cnt = 2 ** (bits - 1) - 1
    step = b.op("Div", b.op("Cast", scale, to=_TP["float"]), b.const(float(bin_cnt), np.float32))
    return b.op("Max", step, b.const(_SMALLEST_NORMAL, np.float32)), bin_cnt


def _paddle_abs_max(b, op, x, scale, bits, training, rounding):
    if training:
        raise RuntimeError(f"fakequant ONNX lowering of {op}: training=True updates the quantizer's state, which "
                           "an inference graph cannot do; export the model in eval() (the quantizers then pass "
                           "training=False)")
    _check_rounding(rounding, op)
    step, bin_cnt = _abs_max_step(b, scale, bits)
    zero = b.const(np.zeros((1,), np.int32), np.int32)
    return _qdq(b, x, step, zero, None, -bin_cnt, bin_cnt, op), _mask(b)


def fake_quant_moving_average_abs_max(b, x, scale, state, accum, moving_rate=0.9, bits=8, training=True,
                                      rounding="half_away"):
    return _paddle_abs_max(b, "fake_quant_moving_average_abs_max", x, scale, bits, training, rounding)


def fake_quant_range_abs_max(b, x, scale, window, iter, bits=8, training=True, rounding="half_away"):
    return _paddle_abs_max(b, "fake_quant_range_abs_max", x, scale, bits, training, rounding)


def fused_moving_avg_obs_fake_quant(b, x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                                    averaging_const, quant_min, quant_max, axis=None, symmetric=False,
                                    reduce_range=False, rounding="half_even"):
    # The observer switch is a tensor whose value the graph cannot know at export time: the
    # modules refuse to export while observing (observing_error); the fake-quant switch is honoured.
    op = "fused_moving_avg_obs_fake_quant"
    _check_rounding(rounding, op)
    if reduce_range:  # the op's own reduce_range (the modules apply it in Python and pass False)
        quant_min, quant_max = quant_min // 2, quant_max // 2
    if axis is not None:
        axis, _ = _wrap_axis(b, x, axis)
    y = _qdq(b, x, scale, zero_point, axis, quant_min, quant_max, op)
    on = b.op("Cast", b.op("Reshape", fake_quant_on, b.const(np.zeros((0,), np.int64), np.int64)), to=9)
    return b.op("Where", on, y, x), _mask(b)


def fake_quant_weight_abs_max(b, w, axis, quant_min, quant_max, rounding="half_even",
                              eps=1.1920928955078125e-07):
    op = "fake_quant_weight_abs_max"
    _check_rounding(rounding, op)
    axis, _ = _wrap_axis(b, w, axis)
    amax = b.op("Cast", _amax_over_others(b, w, axis), to=_TP["float"])
    scale = b.op("Div", amax, b.const(float(quant_max - quant_min) / 2, np.float32))
    scale = b.op("Max", scale, b.const(float(np.float32(eps)), np.float32))
    zero = b.op("Cast", b.op("Mul", scale, b.const(0.0, np.float32)), to=_TP["int32"])
    return _qdq(b, w, scale, zero, axis, quant_min, quant_max, op), _mask(b), scale


def abs_max(b, x, axis=None):
    return b.op("Cast", _amax_over_others(b, x, axis), to=_TP["float"])


def min_max(b, x, axis=None):
    xf = b.op("Cast", x, to=_TP["float"])
    if axis is None:
        return b.op("ReduceMin", xf, keepdims=0), b.op("ReduceMax", xf, keepdims=0)
    axis, rank = _wrap_axis(b, x, axis)
    others = b.const([d for d in range(rank) if d != axis], np.int64)
    return b.op("ReduceMin", xf, others, keepdims=0), b.op("ReduceMax", xf, others, keepdims=0)


_ONNX_FLOAT_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}


def fake_quant_per_group(b, x, group_size, quant_min=-8, quant_max=7, rounding="half_even", eps=None):
    """Per-group symmetric quant-dequant along the last dim. The scale of each group,
    ``max(T(absmax / ((quant_max - quant_min) / 2)), eps)``, from a reshape to
    [..., groups, group_size]; then opset 21's blocked Q/DQ (``block_size``, int4 for [-8, 7]) where
    the graph's opset allows it (the dynamo exporter with opset_version >= 21), else the same
    arithmetic in float ops (x / scale rounded half to even, clamped, times scale)."""
    op = "fake_quant_per_group"
    _check_rounding(rounding, op)
    rank = b.rank(x)
    shape = b.rank_shape(x)
    if rank is None or shape is None:
        raise ValueError(f"fakequant ONNX lowering of {op}: needs the input's static shape")
    groups = shape[-1] // group_size
    grouped = b.op("Reshape", x, b.const(list(shape[:-1]) + [groups, group_size], np.int64))
    amax = b.op("ReduceMax", b.op("Abs", grouped), b.const([-1], np.int64), keepdims=0)
    q = b.op("Div", amax, b.op("CastLike", b.const(float(quant_max - quant_min) / 2, np.float32), amax))
    scale = b.op("Cast", q, to=_TP["float"])  # the quotient in x's dtype T, then float32
    tiny = float(torch.finfo(b.dtype(x) or torch.float32).tiny) if eps is None else float(np.float32(eps))
    scale = b.op("Max", scale, b.const(tiny, np.float32))
    if b.opset >= 21:
        name = "int4" if -8 <= quant_min and quant_max <= 7 else _int_type(quant_min, quant_max, op)[0]
        lo, hi = (-8, 7) if name == "int4" else _int_type(quant_min, quant_max, op)[1:]
        xf = b.op("Cast", x, to=_TP["float"])
        zero = b.op("Cast", b.op("Mul", scale, b.const(0.0, np.float32)), to={"int4": 22}.get(name, _TP.get(name)))
        qx = b.op("QuantizeLinear", xf, scale, zero, axis=-1, block_size=group_size)
        if (quant_min, quant_max) != (lo, hi):
            raise ValueError(f"fakequant ONNX lowering of {op}: [{quant_min}, {quant_max}] is not a full "
                             "int4 / int8 range")
        out = b.op("DequantizeLinear", qx, scale, zero, axis=-1, block_size=group_size)
    else:
        s = b.op("Unsqueeze", scale, b.const([-1], np.int64))
        xs = b.op("Div", b.op("Cast", grouped, to=_TP["float"]), s)
        qx = b.op("Clip", b.op("Round", xs), b.const(float(quant_min), np.float32),
                  b.const(float(quant_max), np.float32))
        out = b.op("Reshape", b.op("Mul", qx, s), b.const(list(shape), np.int64))
    out = b.op("CastLike", out, x)
    return out, _mask(b), scale


_FP8 = {"e4m3": (17, 448.0), "e5m2": (19, 57344.0)}  # ONNX FLOAT8E4M3FN / FLOAT8E5M2 and the formats' max


def fake_quant_block(b, x, format, scale_rule, block_rows=1, block_cols=32, quant_min=-128, quant_max=127, eps=None,
                     amax_lower=None, amax_upper=None, tensor_scale=False, rounding="half_even", seed=None):
    """FP8 with torchao's rule (``fp8_torchao``: ``scale = clamp(amax, lb, ub) / max``,
    ``y = fp8(clamp(x / scale)) * scale``), float32 input, per tensor (one tile covers it) or per
    row (tiles of one whole row): opset 19's Q/DQ with a float8 type, saturating, which divides
    by the scale and rounds half to even as the rule does, so the values are exact. The other
    block formats and rules (MX, NVFP4, int, ModelOpt's FP8) have no lowering."""
    op = "fake_quant_block"
    if format not in _FP8 or scale_rule != "fp8_torchao":
        raise ValueError(f"fakequant ONNX lowering of {op}: format={format!r}, scale_rule={scale_rule!r} has no "
                         "ONNX lowering (FP8 with scale_rule='fp8_torchao' has)")
    if rounding != "half_even" or seed is not None:
        raise ValueError(f"fakequant ONNX lowering of {op}: only rounding='half_even' (ONNX's float8 cast) lowers")
    if b.opset < 19:
        raise ValueError(f"fakequant ONNX lowering of {op}: float8 Q/DQ needs opset_version >= 19")
    shape = b.rank_shape(x)
    if shape is None or b.dtype(x) not in (None, torch.float32):
        raise ValueError(f"fakequant ONNX lowering of {op}: needs a float32 input of static shape")
    cols = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    per_tensor = block_rows >= rows and block_cols >= cols
    if not per_tensor and not (block_rows == 1 and block_cols >= cols):
        raise ValueError(f"fakequant ONNX lowering of {op}: FP8 lowers per tensor or per row, not in "
                         f"{block_rows} x {block_cols} tiles")
    fp8_type, fp8_max = _FP8[format]
    x2 = b.op("Reshape", x, b.const([rows, cols], np.int64))
    ax = b.op("Abs", x2)
    amax = b.op("ReduceMax", ax, keepdims=0) if per_tensor else \
        b.op("ReduceMax", ax, b.const([1], np.int64), keepdims=0)
    if amax_lower is not None:
        amax = b.op("Max", amax, b.const(float(np.float32(amax_lower)), np.float32))
    if amax_upper is not None:
        amax = b.op("Min", amax, b.const(float(np.float32(amax_upper)), np.float32))
    scale = b.op("Div", amax, b.const(fp8_max, np.float32))
    zero = b.op("Cast", b.op("Mul", scale, b.const(0.0, np.float32)), to=fp8_type)
    extra = {} if per_tensor else {"axis": 0}
    q = b.op("QuantizeLinear", x2, scale, zero, **extra)
    y = b.op("Reshape", b.op("DequantizeLinear", q, scale, zero, **extra), b.const(list(shape), np.int64))
    grid = b.op("Reshape", scale, b.const([1 if per_tensor else rows, 1], np.int64))
    tensor_amax = amax if per_tensor else b.const(np.zeros((0,), np.float32), np.float32)
    return y, _mask(b), grid, b.const(np.zeros((0,), np.int32), np.int32), tensor_amax


#: op name -> (lowering, the schema's argument names after ``input``, which are constants).
_LOWERINGS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "fake_quant_per_tensor": (fake_quant_per_tensor, ("v", "v", "v", "i", "i", "s", "v")),
    "fake_quant_per_channel": (fake_quant_per_channel, ("v", "v", "v", "i", "i", "i", "s", "v")),
    "fake_quant_learnable_per_tensor": (fake_quant_learnable_per_tensor, ("v", "v", "v", "i", "i", "f")),
    "fake_quant_learnable_per_channel": (fake_quant_learnable_per_channel, ("v", "v", "v", "i", "i", "i", "f")),
    "fake_quant_moving_average_abs_max": (fake_quant_moving_average_abs_max,
                                          ("v", "v", "v", "v", "f", "i", "b", "s")),
    "fake_quant_range_abs_max": (fake_quant_range_abs_max, ("v", "v", "v", "v", "i", "b", "s")),
    "fused_moving_avg_obs_fake_quant": (fused_moving_avg_obs_fake_quant,
                                        ("v", "v", "v", "v", "v", "v", "v", "f", "i", "i", "i", "b", "b", "s")),
    "fake_quant_weight_abs_max": (fake_quant_weight_abs_max, ("v", "i", "i", "i", "s", "f")),
    "fake_quant_per_group": (fake_quant_per_group, ("v", "i", "i", "i", "s", "f")),
    "fake_quant_block": (fake_quant_block, ("v", "s", "s", "i", "i", "i", "i", "f", "f", "f", "b", "s", "v")),
    "abs_max": (abs_max, ("v", "i")),
    "min_max": (min_max, ("v", "i")),
}


# ---------------------------------------------------------------------------------------
# The TorchScript (legacy) exporter


def _conv_bn_fake_quant_legacy(g, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding,
                               dilation, groups, eps, momentum, fold_mode, training, relu, quantize_weight,
                               quant_min, quant_max, rounding, weight_eps):
    """The eval ConvBN op: the weight folded with the running statistics (s = gamma / sqrt(var + eps)
    in float64, as the op does), quantised per output channel, the conv plus the folded bias."""
    from torch.onnx import symbolic_helper as sh

    if training:
        raise RuntimeError("fakequant ONNX lowering of conv_bn_fake_quant: training=True uses batch statistics "
                           "and updates the running ones; export the model in eval()")
    _check_rounding(rounding, "conv_bn_fake_quant")
    b = _Legacy(g)
    dbl = _TP["double"]
    s = b.op("Div", b.op("Cast", bn_weight, to=dbl),
             b.op("Sqrt", b.op("Add", b.op("Cast", running_var, to=dbl), b.const(eps, np.float64))))
    cbias = b.const(0.0, np.float64) if sh._is_none(bias) else b.op("Cast", bias, to=dbl)
    fbias = b.op("Add", b.op("Cast", bn_bias, to=dbl),
                 b.op("Mul", s, b.op("Sub", cbias, b.op("Cast", running_mean, to=dbl))))
    shape = b.const([-1, 1, 1, 1], np.int64)
    folded = b.op("Mul", weight, b.op("Reshape", b.op("Cast", s, to=_TP["float"]), shape))
    if quantize_weight:
        folded = fake_quant_weight_abs_max(b, folded, 0, quant_min, quant_max, rounding, weight_eps)[0]
    out = b.op("Conv", x, folded, b.op("Cast", fbias, to=_TP["float"]), strides=stride, pads=list(padding) * 2,
               dilations=dilation, group=groups)
    if relu:
        out = b.op("Relu", out)
    empty = _mask(b)
    return out, empty, b.op("Cast", folded, to=_TP["float"]), empty, empty, b.const(np.zeros((6, 0)), np.float64)


def _legacy_symbolic(fn, arg_kinds):
    from torch.onnx import symbolic_helper as sh

    def symbolic(g, *args):
        args = list(args)
        for i, kind in enumerate(arg_kinds):
            if sh._is_none(args[i]):
                args[i] = None
            elif kind != "v":
                args[i] = sh._get_const(args[i], kind, f"argument {i}")
        kwargs = {}
        if fn is fake_quant_per_channel:
            kwargs["zero_point_is_float"] = _legacy_is_float(args[2])
        if fn in (fake_quant_per_tensor, fake_quant_per_channel) and args[-1] is not None:
            raise ValueError("fakequant ONNX lowering: a seed (stochastic rounding) has no ONNX equivalent")
        return fn(_Legacy(g), *args, **kwargs)

    return symbolic


def _legacy_is_float(v) -> bool:
    t = v.type()
    scalar = getattr(t, "scalarType", lambda: None)()
    return scalar in ("Float", "Double", "Half", "BFloat16")


def register_onnx_symbolics(opset_version: int = OPSET) -> None:
    """Register the lowerings with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``)
    for ``opset_version`` and later. Idempotent."""
    from torch.onnx import symbolic_helper as sh

    for name, (fn, kinds) in _LOWERINGS.items():
        torch.onnx.register_custom_op_symbolic(f"fakequant::{name}", _legacy_symbolic(fn, kinds), opset_version)
    conv_bn = sh.parse_args("v", "v", "v", "v", "v", "v", "v", "is", "is", "is", "i", "f", "f", "s", "b", "b", "b",
                            "i", "i", "s", "f")(_conv_bn_fake_quant_legacy)
    torch.onnx.register_custom_op_symbolic("fakequant::conv_bn_fake_quant", conv_bn, opset_version)


# ---------------------------------------------------------------------------------------
# The dynamo exporter


def _script_translation(fn, name):
    schema = getattr(torch.ops.fakequant, name).default._schema

    def translate(*args, **kwargs):
        # The exporter passes the FX node's arguments, defaults left out: bind them to the schema.
        values = []
        for i, a in enumerate(schema.arguments):
            if i < len(args):
                values.append(args[i])
            elif a.name in kwargs:
                values.append(kwargs[a.name])
            else:
                values.append(a.default_value if a.has_default_value() else None)
        extra = {}
        if name == "fake_quant_per_channel":
            zp_type = values[2].dtype
            extra["zero_point_is_float"] = zp_type is not None and zp_type.name in ("FLOAT", "DOUBLE", "FLOAT16",
                                                                                     "BFLOAT16")
        if name in ("fake_quant_per_tensor", "fake_quant_per_channel") and values[-1] is not None:
            raise ValueError("fakequant ONNX lowering: a seed (stochastic rounding) has no ONNX equivalent")
        return fn(_Script(), *values, **extra)

    translate.__name__ = f"fakequant_{name}"
    return translate


def onnx_translation_table() -> dict:
    """``{torch.ops.fakequant.<op>.default: translation}`` for
    ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``."""
    return {getattr(torch.ops.fakequant, name).default: _script_translation(fn, name)
            for name, (fn, _) in _LOWERINGS.items()}


# ---------------------------------------------------------------------------------------
# The mutating ops under the dynamo exporter: rewritten to non-mutating equivalents


def _moving_average_abs_max_eval(input, scale, state, accum, moving_rate=0.9, bits=8, training=True,
                                 rounding="half_away"):
    return _paddle_eval("fake_quant_moving_average_abs_max", input, scale, bits, training, rounding)


def _range_abs_max_eval(input, scale, window, iter, bits=8, training=True, rounding="half_away"):
    return _paddle_eval("fake_quant_range_abs_max", input, scale, bits, training, rounding)


def _paddle_eval(op, input, scale, bits, training, rounding):
    if training:
        raise RuntimeError(f"fakequant.{op} is called with training=True, which updates the quantizer's state: an "
                           "ONNX inference graph cannot; export the model in eval()")
    bin_cnt = 2 ** (bits - 1) - 1
    step = torch.clamp(scale / bin_cnt, min=_SMALLEST_NORMAL)  # the op's abs_max_step
    return _common.OPS.fake_quant_per_tensor(input, step, torch.zeros_like(scale, dtype=torch.int32), -bin_cnt,
                                             bin_cnt, rounding)


def _fused_moving_avg_obs_eval(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                               averaging_const, quant_min, quant_max, axis=None, symmetric=False, reduce_range=False,
                               rounding="half_even"):
    if reduce_range:
        quant_min, quant_max = quant_min // 2, quant_max // 2
    if axis is None:
        out, mask = _common.OPS.fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding)
    else:
        out, mask = _common.OPS.fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding)
    return torch.where(fake_quant_on.reshape(()) != 0, out, input), mask


def _conv_bn_eval(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride=(1, 1),
                  padding=(0, 0), dilation=(1, 1), groups=1, eps=1e-5, momentum=0.1, fold_mode="batch",
                  training=True, relu=False, quantize_weight=True, quant_min=-128, quant_max=127,
                  rounding="half_even", weight_eps=1.1920928955078125e-07):
    # The op's eval arithmetic (as the ConvBn modules' composite eval path): s in float64 rounded
    # once to the weight's dtype, the bias beta + s * (b - mean) in float64.
    if training:
        raise RuntimeError("fakequant.conv_bn_fake_quant is called with training=True (batch statistics, running "
                           "statistics updated in place): export the model in eval()")
    s = bn_weight.double() * torch.rsqrt(running_var.double() + eps)
    b = bias.double() if bias is not None else torch.zeros_like(s)
    folded_bias = (bn_bias.double() + s * (b - running_mean.double())).to(bn_bias.dtype)
    folded = weight * s.to(weight.dtype).reshape(-1, 1, 1, 1)
    if quantize_weight:
        folded = _common.OPS.fake_quant_weight_abs_max(folded, 0, quant_min, quant_max, rounding, weight_eps)[0]
    out = torch.nn.functional.conv2d(input, folded, None, stride, padding, dilation, groups)
    out = out + folded_bias.reshape(1, -1, 1, 1).to(out.dtype)
    if relu:
        out = torch.relu(out)
    empty = input.new_empty((0,))
    return out, empty, folded, empty.to(torch.uint8), empty.to(torch.uint8), empty.double()


_EVAL_FORMS = {
    "fake_quant_moving_average_abs_max": _moving_average_abs_max_eval,
    "fake_quant_range_abs_max": _range_abs_max_eval,
    "fused_moving_avg_obs_fake_quant": _fused_moving_avg_obs_eval,
    "conv_bn_fake_quant": _conv_bn_eval,
}


def _exported_for_onnx(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes):
    """``model`` as an ExportedProgram in which every call of a state-mutating fakequant op is
    replaced by its eval form from non-mutating ops (same values). A moving-average min/max call whose
    observer switch is on (read from the module's buffer) raises the observing error."""
    program = torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    targets = {getattr(torch.ops.fakequant, name).default: fn for name, fn in _EVAL_FORMS.items()}
    if not any(n.op == "call_function" and n.target in targets for n in program.graph.nodes):
        return program
    module = program.module()
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in targets:
            continue
        if node.target is torch.ops.fakequant.fused_moving_avg_obs_fake_quant.default:
            observer_on = node.args[1]
            if observer_on.op == "get_attr" and bool(module.get_buffer(observer_on.target).any()):
                raise RuntimeError(f"fakequant.fused_moving_avg_obs_fake_quant is called with its observer on (buffer "
                                   f"{observer_on.target}), which an ONNX inference graph cannot do; disable the "
                                   "observer (model.apply(torch.ao.quantization.disable_observer))")
        node.target = targets[node.target]
    module.recompile()
    return torch.export.export(module, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False)


# ---------------------------------------------------------------------------------------
# to_onnx


def to_onnx(model: torch.nn.Module, args: tuple, f: str | os.PathLike | io.BytesIO | None = None, *,
            dynamo: bool = True, opset_version: int = OPSET, **kwargs):
    """``torch.onnx.export`` with fakequant's lowerings: the model (a QAT model in eval, with its
    observers off, or a ``fakequant.convert`` output) is traced with ``args`` and written to ``f``.
    Returns what ``torch.onnx.export`` returns (the ``ONNXProgram`` with ``dynamo=True``). Extra
    keyword arguments go to ``torch.onnx.export`` (``dynamic_shapes`` and ``kwargs`` to the
    ``torch.export.export`` call that captures the model for the dynamo exporter).

    First the moving-average min/max quantizers store the qparams of their running statistics
    (``refresh_qparams``: what their op writes on its next fake-quantizing call), since the graph
    uses the stored ones."""
    if model.training:
        raise RuntimeError(f"fakequant.export.to_onnx: {type(model).__name__} is in training mode, where its "
                           "quantizers observe; call model.eval() (and disable the observers of min/max quantizers: "
                           "model.apply(torch.ao.quantization.disable_observer)) before exporting")
    with torch.no_grad():
        for module in model.modules():  # the min/max quantizers' stored qparams, as their op would recompute them
            refresh = getattr(module, "refresh_qparams", None)
            if refresh is not None and getattr(module, "_fake_quant_on", False):
                refresh()
        if dynamo:
            table = dict(kwargs.pop("custom_translation_table", None) or {})
            table = {**onnx_translation_table(), **table}
            kwargs.setdefault("verbose", False)  # the exporter's progress lines
            # torch.onnx cannot translate the auto_functionalized form that export gives a direct call
            # of an op that mutates state: the program it gets has their eval forms instead.
            exported = _exported_for_onnx(model, tuple(args), kwargs.pop("kwargs", None) or {},
                                          kwargs.pop("dynamic_shapes", None))
            program = torch.onnx.export(exported, tuple(args), dynamo=True, opset_version=opset_version,
                                        custom_translation_table=table, **kwargs)
            if f is not None:
                program.save(f) if not isinstance(f, io.BytesIO) else f.write(program.model_proto.SerializeToString())
            return program
        register_onnx_symbolics(opset_version)
        return torch.onnx.export(model, tuple(args), f, dynamo=False, opset_version=opset_version, **kwargs)
