"""The typed Python API over ``torch.ops.fakequant.*``, one module per op family.

Each family's module holds its typed functions, its fake (meta) kernels and its autograd;
importing it registers them (``_common`` loads the op library first). The families:
``fake_quant`` (per-tensor / per-channel quant-dequant), ``reduce`` (abs-max, min/max),
``observers`` (the fused observers), ``weight_quant`` (abs-max quant-dequant per weight channel
or per group), ``block_quant`` (block-scaled formats: per-token / per-group int, FP8, MX,
NVFP4), ``learnable`` (LSQ / LSQ+) and ``convbn`` (ConvBN forward-fused / backward-unfused).
"""

from . import block_quant, convbn, fake_quant, learnable, observers, reduce, weight_quant
from ._common import FLOAT32_EPS, ROUNDINGS, SEED_HIGH
from .block_quant import (
    BLOCK_FORMATS,
    BLOCK_SCALE_RULES,
    MX_SCALE_MODES,
    fake_quantize_block,
    fake_quantize_fp8,
    fake_quantize_int_modelopt,
    fake_quantize_mx,
    fake_quantize_nvfp4,
    fake_quantize_per_group_affine,
    fake_quantize_per_token,
)
from .convbn import conv_bn_fake_quant, conv_bn_fake_quant_with_fold_scale, fold_weight
from .fake_quant import (
    fake_quantize_per_channel,
    fake_quantize_per_channel_with_mask,
    fake_quantize_per_tensor,
    fake_quantize_per_tensor_with_mask,
    masked_grad,
)
from .learnable import fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor
from .observers import (
    fake_quantize_moving_average_abs_max,
    fake_quantize_range_abs_max,
    fused_moving_avg_obs_fake_quant,
)
from .reduce import abs_max, min_max
from .weight_quant import (
    fake_quantize_per_group,
    fake_quantize_weight_abs_max,
    fake_quantize_weight_abs_max_with_mask,
)

__all__ = [
    "BLOCK_FORMATS",
    "BLOCK_SCALE_RULES",
    "FLOAT32_EPS",
    "MX_SCALE_MODES",
    "ROUNDINGS",
    "SEED_HIGH",
    "abs_max",
    "block_quant",
    "conv_bn_fake_quant",
    "conv_bn_fake_quant_with_fold_scale",
    "convbn",
    "fake_quant",
    "fake_quantize_block",
    "fake_quantize_fp8",
    "fake_quantize_int_modelopt",
    "fake_quantize_learnable_per_channel",
    "fake_quantize_learnable_per_tensor",
    "fake_quantize_moving_average_abs_max",
    "fake_quantize_mx",
    "fake_quantize_nvfp4",
    "fake_quantize_per_channel",
    "fake_quantize_per_channel_with_mask",
    "fake_quantize_per_group",
    "fake_quantize_per_group_affine",
    "fake_quantize_per_tensor",
    "fake_quantize_per_tensor_with_mask",
    "fake_quantize_per_token",
    "fake_quantize_range_abs_max",
    "fake_quantize_weight_abs_max",
    "fake_quantize_weight_abs_max_with_mask",
    "fold_weight",
    "fused_moving_avg_obs_fake_quant",
    "learnable",
    "masked_grad",
    "min_max",
    "observers",
    "reduce",
    "weight_quant",
]
