"""Fake-quantize modules for quantization-aware training that drop into PyTorch's flows.

Every class is a ``torch.ao.quantization.FakeQuantizeBase`` (a local base class with the
same API when torch.ao is gone) and is registered as a virtual subclass of torchao's
``torchao.quantization.pt2e.FakeQuantizeBase``, so torch.ao's eager / FX ``prepare_qat`` and
torchao's ``prepare_qat_pt2e`` / ``convert_pt2e`` treat them as their own fake quantizers.
Each forward runs one fused fakequant op (docs/qat.md).

``fakequant.nn.qat`` holds the QAT modules: Conv1d/2d/3d, ConvTranspose1d/2d, Linear,
Embedding, EmbeddingBag, ConvBn1d/2d/3d and ConvBnReLU1d/2d/3d.
"""

from .fake_quantize import (
    AbsMaxWeightFakeQuantize,
    FakeQuantizeBase,
    LearnableFakeQuantize,
    MovingAverageAbsMaxFakeQuantize,
    MovingAverageMinMaxFakeQuantize,
    MovingAveragePerChannelMinMaxFakeQuantize,
    RangeAbsMaxFakeQuantize,
    register_with_torchao,
)
from . import qat  # noqa: E402  (after the fake quantizers it builds on)

__all__ = [
    "AbsMaxWeightFakeQuantize",
    "FakeQuantizeBase",
    "LearnableFakeQuantize",
    "MovingAverageAbsMaxFakeQuantize",
    "MovingAverageMinMaxFakeQuantize",
    "MovingAveragePerChannelMinMaxFakeQuantize",
    "RangeAbsMaxFakeQuantize",
    "register_with_torchao",
]
