"""``fakequant.qconfig``: QAT configurations of fakequant's fake-quantize modules, for
torch.ao's eager / FX flows and torchao's pt2e flow. Defined in :mod:`fakequant.nn.qconfig`,
next to the modules they configure."""

from .nn.qconfig import BACKENDS, get_qat_constructors, get_qat_qconfig, get_torchao_qat_quantizer

__all__ = ["BACKENDS", "get_qat_constructors", "get_qat_qconfig", "get_torchao_qat_quantizer"]
