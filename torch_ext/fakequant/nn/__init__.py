"""Fake-quantize modules for quantization-aware training that drop into PyTorch's flows.

Every class is a ``torch.ao.quantization.FakeQuantizeBase`` (a local base class with the
same API when torch.ao is gone) and is registered as a virtual subclass of torchao's
``torchao.quantization.pt2e.FakeQuantizeBase``, so torch.ao's eager / FX ``prepare_qat`` and
torchao's ``prepare_qat_pt2e`` / ``convert_pt2e`` treat them as their own fake quantizers.
Each forward runs one fused fakequant op (docs/qat.md).

One module per topic: ``base`` (the base class and the argument checks the quantizers
share), ``paddle``, ``min_max``, ``learnable``, ``weight`` (the quantizers), ``torchao`` (the
registration with torchao's pt2e flow, the fused fake quantizers for its QAT flow),
``block`` (the dynamic quantizers of the block-scaled LLM formats: per token, per group,
FP8, MX, NVFP4, and ``prepare_llm_qat`` / ``convert_llm_qat``), ``qconfig`` (configurations of these quantizers, public as ``fakequant.qconfig``) and ``qat``
(the QAT modules: Conv1d/2d/3d, ConvTranspose1d/2d, Linear, Embedding, EmbeddingBag,
ConvBn1d/2d/3d, ConvBnReLU1d/2d/3d, ConvReLU1d/2d/3d, LinearReLU).
"""

from . import qat, qconfig
from .base import FakeQuantizeBase
from .block import (
    Float8FakeQuantize,
    MXFakeQuantize,
    NVFP4FakeQuantize,
    PerGroupFakeQuantize,
    PerTokenFakeQuantize,
    convert_llm_qat,
    llm_qat_qconfig,
    prepare_llm_qat,
)
from .learnable import LearnableFakeQuantize
from .min_max import MovingAverageMinMaxFakeQuantize, MovingAveragePerChannelMinMaxFakeQuantize
from .paddle import MovingAverageAbsMaxFakeQuantize, RangeAbsMaxFakeQuantize
from .torchao import fuse_torchao_fake_quantizers, register_with_torchao
from .weight import AbsMaxWeightFakeQuantize

__all__ = [
    "AbsMaxWeightFakeQuantize",
    "FakeQuantizeBase",
    "Float8FakeQuantize",
    "LearnableFakeQuantize",
    "MXFakeQuantize",
    "MovingAverageAbsMaxFakeQuantize",
    "MovingAverageMinMaxFakeQuantize",
    "MovingAveragePerChannelMinMaxFakeQuantize",
    "NVFP4FakeQuantize",
    "PerGroupFakeQuantize",
    "PerTokenFakeQuantize",
    "RangeAbsMaxFakeQuantize",
    "convert_llm_qat",
    "fuse_torchao_fake_quantizers",
    "llm_qat_qconfig",
    "prepare_llm_qat",
    "qat",
    "qconfig",
    "register_with_torchao",
]
