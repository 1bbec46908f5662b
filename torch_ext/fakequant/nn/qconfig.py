"""QAT configurations built from fakequant's fake-quantize modules (docs/qat.md), public as
``fakequant.qconfig``.

* :func:`get_qat_qconfig` returns a ``torch.ao.quantization.QConfig`` for torch.ao's eager
  ``prepare_qat`` / ``convert`` and FX ``prepare_qat_fx`` / ``convert_fx``.
* :func:`get_torchao_qat_quantizer` returns a torchao pt2e ``Quantizer`` for
  ``prepare_qat_pt2e`` / ``convert_pt2e`` whose specs construct the same modules.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

from .base import _float_arg, _int_arg
from .min_max import MovingAverageMinMaxFakeQuantize, MovingAveragePerChannelMinMaxFakeQuantize
from .paddle import MovingAverageAbsMaxFakeQuantize, RangeAbsMaxFakeQuantize
from .weight import AbsMaxWeightFakeQuantize

BACKENDS = ("pytorch", "paddle")


def get_qat_constructors(
    backend: str = "pytorch",
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
    weight_quantize_type: str | None = None,
    activation_quantize_type: str | None = None,
    weight_bits: int = 8,
    activation_bits: int = 8,
    moving_rate: float = 0.9,
    window_size: int = 10000,
    ahead_relu: bool = False,
) -> tuple[Callable[[], torch.nn.Module], Callable[[], torch.nn.Module]]:
    """``(activation_ctr, weight_ctr)``: ``functools.partial`` constructors of the modules
    :func:`get_qat_qconfig` uses (arguments documented there). Bad values raise here, naming
    the argument, with the ranges the modules and ops accept."""
    name = "get_qat_qconfig"
    weight_bits = _int_arg(name, "weight_bits", weight_bits, 2, 16)
    activation_bits = _int_arg(name, "activation_bits", activation_bits, 2, 16)
    moving_rate = _float_arg(name, "moving_rate", moving_rate, 0.0, 1.0, hi_open=True)
    window_size = _int_arg(name, "window_size", window_size, 1)
    if backend == "pytorch":
        if weight_bits != 8 or activation_bits != 8:
            raise ValueError("get_qat_qconfig: backend='pytorch' quantizes to 8 bits (quint8 activations, qint8 "
                             f"weights), got weight_bits={weight_bits}, activation_bits={activation_bits}")
        act = partial(MovingAverageMinMaxFakeQuantize, quant_min=0, quant_max=255, dtype=torch.quint8,
                      qscheme=torch.per_tensor_affine, reduce_range=reduce_range, ahead_relu=ahead_relu)
        weight_quantize_type = weight_quantize_type or "moving_average_min_max"
        if weight_quantize_type == "moving_average_min_max":
            weight = partial(MovingAveragePerChannelMinMaxFakeQuantize) if per_channel else partial(
                MovingAverageMinMaxFakeQuantize, quant_min=-128, quant_max=127, dtype=torch.qint8,
                qscheme=torch.per_tensor_symmetric)
        elif weight_quantize_type == "abs_max":
            weight = partial(AbsMaxWeightFakeQuantize, quant_min=-128, quant_max=127,
                             ch_axis=0 if per_channel else None)
        else:
            raise ValueError("get_qat_qconfig: backend='pytorch' takes weight_quantize_type "
                             f"'moving_average_min_max' or 'abs_max', got {weight_quantize_type!r}")
        if activation_quantize_type not in (None, "moving_average_min_max"):
            raise ValueError("get_qat_qconfig: backend='pytorch' takes activation_quantize_type "
                             f"'moving_average_min_max', got {activation_quantize_type!r}")
        return act, weight
    if backend == "paddle":
        activation_quantize_type = activation_quantize_type or "moving_average_abs_max"
        if activation_quantize_type == "moving_average_abs_max":
            act = partial(MovingAverageAbsMaxFakeQuantize, bits=activation_bits, moving_rate=moving_rate,
                          ahead_relu=ahead_relu)
        elif activation_quantize_type == "range_abs_max":
            act = partial(RangeAbsMaxFakeQuantize, bits=activation_bits, window_size=window_size,
                          ahead_relu=ahead_relu)
        else:
            raise ValueError("get_qat_qconfig: backend='paddle' takes activation_quantize_type "
                             f"'moving_average_abs_max' or 'range_abs_max', got {activation_quantize_type!r}")
        weight_quantize_type = weight_quantize_type or "channel_wise_abs_max"
        if weight_quantize_type not in ("channel_wise_abs_max", "abs_max"):
            raise ValueError("get_qat_qconfig: backend='paddle' takes weight_quantize_type "
                             f"'channel_wise_abs_max' or 'abs_max', got {weight_quantize_type!r}")
        bin_cnt = 2 ** (weight_bits - 1) - 1
        weight = partial(AbsMaxWeightFakeQuantize, quant_min=-bin_cnt, quant_max=bin_cnt,
                         ch_axis=0 if weight_quantize_type == "channel_wise_abs_max" else None, rounding="half_away")
        return act, weight
    raise ValueError(f"get_qat_qconfig: backend must be one of {BACKENDS}, got {backend!r}")


def get_qat_qconfig(backend: str = "pytorch", **kwargs: Any):
    """A ``torch.ao.quantization.QConfig(activation, weight)`` of fakequant modules.

    ``backend="pytorch"`` (torch.ao's x86/fbgemm QAT defaults, fused): activations
    :class:`~fakequant.nn.MovingAverageMinMaxFakeQuantize` (quint8 ``[0, 255]`` affine,
    ``reduce_range=True`` as torch.ao's x86 default; pass ``reduce_range=False`` for
    qnnpack), weights :class:`~fakequant.nn.MovingAveragePerChannelMinMaxFakeQuantize`
    (qint8 per-channel symmetric; ``per_channel=False``: per-tensor symmetric) or, with
    ``weight_quantize_type="abs_max"``, :class:`~fakequant.nn.AbsMaxWeightFakeQuantize`.
    Eager ``convert`` of this config gives torch's quantized modules.

    ``backend="paddle"`` (PaddleSlim's ``quant_aware`` config keys): activations
    ``activation_quantize_type`` ``"moving_average_abs_max"`` (default; ``moving_rate``) or
    ``"range_abs_max"`` (``window_size``), ``activation_bits``; weights
    ``weight_quantize_type`` ``"channel_wise_abs_max"`` (default) or ``"abs_max"`` with
    Paddle's narrow range ``[-(2**(b-1)-1), 2**(b-1)-1]``, ``weight_bits``, ``half_away``
    rounding. Symmetric qint8 activations: torch.ao's eager/FX convert can only emit
    reference (``is_reference=True``) models for them (docs/qat.md).

    ``ahead_relu=True`` gives activations that observe and quantize ``relu(x)``; use it only
    for outputs a ReLU consumes.
    """
    from torch.ao.quantization import QConfig

    act, weight = get_qat_constructors(backend, **kwargs)
    return QConfig(activation=_torch_ao_ctr(act), weight=_torch_ao_ctr(weight))


def _torch_ao_ctr(ctr: partial):
    return ctr.func.with_args(**ctr.keywords)


def _torchao_spec(ctr: partial):
    """A torchao ``QuantizationSpec`` whose fields agree with the module ``ctr`` builds."""
    from torchao.quantization.pt2e.observer import _with_args
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    probe = ctr()
    return QuantizationSpec(
        dtype=probe.dtype,
        observer_or_fake_quant_ctr=_with_args(ctr.func, **ctr.keywords),
        quant_min=probe.quant_min,
        quant_max=probe.quant_max,
        qscheme=probe.qscheme,
        ch_axis=probe.ch_axis if probe.is_per_channel else None,
        is_dynamic=False,
    )


def get_torchao_qat_quantizer(backend: str = "pytorch", **kwargs: Any):
    """A torchao pt2e ``Quantizer`` for ``prepare_qat_pt2e`` that quantizes the input
    activation, the weight and the output of every ``linear`` / ``conv1d`` / ``conv2d`` /
    ``conv3d`` node with the modules of :func:`get_qat_qconfig` (same arguments); biases
    stay float. ``convert_pt2e`` turns the inserted modules into quantize/dequantize nodes
    with their ``calculate_qparams()``. Requires torchao."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    act, weight = get_qat_constructors(backend, **kwargs)
    act_spec, weight_spec = _torchao_spec(act), _torchao_spec(weight)
    targets = {torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
               torch.ops.aten.conv3d.default}

    class FakequantQATQuantizer(Quantizer):
        """Annotates linear / conv nodes with fakequant's fake-quantize modules."""

        activation_spec = act_spec
        weight_spec_ = weight_spec

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in targets:
                    continue
                if "quantization_annotation" in node.meta:
                    continue
                x, w = node.args[0], node.args[1]
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={x: act_spec, w: weight_spec}, output_qspec=act_spec, _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return FakequantQATQuantizer()
