"""fakequant: fused fake-quantization kernels for quantization-aware training.

``import fakequant`` loads the op library (``torch.ops.fakequant.*``), registers the fake
(meta) kernels and autograd formulas, and exposes a typed Python API over the ops.
"""

from ._library import library_path, load_library

load_library()

from . import _registrations  # noqa: E402,F401  (registers fake kernels and autograd)
from . import _observers  # noqa: E402,F401
from .observers import (  # noqa: E402
    abs_max,
    fake_quantize_moving_average_abs_max,
    fake_quantize_range_abs_max,
    fused_moving_avg_obs_fake_quant,
    min_max,
)
from . import _weight_quant  # noqa: E402,F401
from . import _learnable  # noqa: E402,F401  (learnable-qparam fake kernels and autograd)
from .learnable import fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor  # noqa: E402
from .ops import (  # noqa: E402
    ROUNDINGS,
    fake_quantize_per_channel,
    fake_quantize_per_channel_with_mask,
    fake_quantize_per_tensor,
    fake_quantize_per_tensor_with_mask,
    masked_grad,
)
from .weight_quant import (  # noqa: E402
    FLOAT32_EPS,
    fake_quantize_weight_abs_max,
    fake_quantize_weight_abs_max_with_mask,
)

from . import _convbn  # noqa: E402,F401  (ConvBN fake kernels and autograd)
from .convbn import conv_bn_fake_quant  # noqa: E402
from . import nn  # noqa: E402  (fakequant.nn: fake-quantize modules; fakequant.nn.qat: QAT modules)
from . import qconfig  # noqa: E402
from .fuse import fuse_conv_bn  # noqa: E402
from .quant_aware import convert, quant_aware  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FLOAT32_EPS",
    "ROUNDINGS",
    "abs_max",
    "convert",
    "fuse_conv_bn",
    "quant_aware",
    "conv_bn_fake_quant",
    "fake_quantize_moving_average_abs_max",
    "fake_quantize_range_abs_max",
    "fused_moving_avg_obs_fake_quant",
    "min_max",
    "fake_quantize_learnable_per_channel",
    "fake_quantize_learnable_per_tensor",
    "fake_quantize_per_channel",
    "fake_quantize_per_channel_with_mask",
    "fake_quantize_per_tensor",
    "fake_quantize_per_tensor_with_mask",
    "fake_quantize_weight_abs_max",
    "fake_quantize_weight_abs_max_with_mask",
    "library_path",
    "masked_grad",
    "nn",
    "qconfig",
]
