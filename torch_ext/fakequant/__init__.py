"""fakequant: fused fake-quantization kernels for quantization-aware training.

``import fakequant`` loads the op library (``torch.ops.fakequant.*``), registers the fake
(meta) kernels and autograd formulas, and exposes a typed Python API over the ops.
"""

from ._library import library_path
from .ops import (  # loads the op library; each family registers its fake kernels and autograd
    FLOAT32_EPS,
    ROUNDINGS,
    abs_max,
    conv_bn_fake_quant,
    fake_quantize_block,
    fake_quantize_fp8,
    fake_quantize_int_modelopt,
    fake_quantize_learnable_per_channel,
    fake_quantize_learnable_per_tensor,
    fake_quantize_moving_average_abs_max,
    fake_quantize_mx,
    fake_quantize_nvfp4,
    fake_quantize_per_channel,
    fake_quantize_per_channel_with_mask,
    fake_quantize_per_group,
    fake_quantize_per_group_affine,
    fake_quantize_per_tensor,
    fake_quantize_per_tensor_with_mask,
    fake_quantize_per_token,
    fake_quantize_range_abs_max,
    fake_quantize_weight_abs_max,
    fake_quantize_weight_abs_max_with_mask,
    fused_moving_avg_obs_fake_quant,
    masked_grad,
    min_max,
)
from . import nn, qconfig  # fakequant.nn: fake-quantize modules; fakequant.nn.qat: QAT modules
from . import distributed  # fakequant.distributed: quantizer statistics across ranks (docs/distributed.md)
from . import export  # fakequant.export: ONNX lowerings and to_onnx (docs/deploy.md)
from .fuse import fuse_conv_bn
from .quant_aware import convert, quant_aware

__version__ = "0.1.0"

__all__ = [
    "FLOAT32_EPS",
    "ROUNDINGS",
    "abs_max",
    "convert",
    "distributed",
    "export",
    "fuse_conv_bn",
    "quant_aware",
    "conv_bn_fake_quant",
    "fake_quantize_moving_average_abs_max",
    "fake_quantize_range_abs_max",
    "fused_moving_avg_obs_fake_quant",
    "min_max",
    "fake_quantize_block",
    "fake_quantize_fp8",
    "fake_quantize_int_modelopt",
    "fake_quantize_learnable_per_channel",
    "fake_quantize_learnable_per_tensor",
    "fake_quantize_mx",
    "fake_quantize_nvfp4",
    "fake_quantize_per_channel",
    "fake_quantize_per_channel_with_mask",
    "fake_quantize_per_group",
    "fake_quantize_per_group_affine",
    "fake_quantize_per_tensor",
    "fake_quantize_per_tensor_with_mask",
    "fake_quantize_per_token",
    "fake_quantize_weight_abs_max",
    "fake_quantize_weight_abs_max_with_mask",
    "library_path",
    "masked_grad",
    "nn",
    "qconfig",
]
