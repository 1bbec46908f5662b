"""torchao integration, without importing torchao at ``import fakequant``.

- pt2e: torchao's flow recognises fakequant's quantizers: they are registered as virtual
  subclasses of ``torchao.quantization.pt2e.FakeQuantizeBase``, at once if torchao is imported,
  else right after it is (an import hook).
- QAT (``torchao.quantization.qat``): :func:`fuse_torchao_fake_quantizers` swaps the fake
  quantizers of a model prepared with ``QATConfig`` for ones computed by fakequant's fused ops,
  bit for bit the same values, where fakequant covers the configuration; torchao's convert
  step then runs unchanged."""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

import torch

from .. import ops as _ops
from ..ops import fake_quantize_per_group
from .base import FakeQuantizeBase


_CLASSES = (FakeQuantizeBase,)
_TORCHAO_MODULE = "torchao.quantization.pt2e.fake_quantize"


def register_with_torchao() -> bool:
    """Register :class:`FakeQuantizeBase` (so every class here) as a virtual subclass of
    torchao's ``FakeQuantizeBase`` (``ABCMeta.register``), which is what torchao's
    ``_is_activation_post_process`` checks. Done automatically when torchao is (or later
    gets) imported; returns False when torchao is not installed."""
    module = sys.modules.get(_TORCHAO_MODULE)
    if module is None:
        if importlib.util.find_spec("torchao") is None:
            return False
        module = importlib.import_module(_TORCHAO_MODULE)
    for cls in _CLASSES:
        if not issubclass(cls, module.FakeQuantizeBase):
            module.FakeQuantizeBase.register(cls)
    return True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers our classes with torchao right after torchao's fake_quantize module is
    imported, so that ``import fakequant`` does not have to import torchao (slow) itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TORCHAO_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                exec_module = loader.exec_module

                class _Loader(importlib.abc.Loader):
                    def create_module(self, spec):
                        return loader.create_module(spec)

                    def exec_module(self, module):
                        exec_module(module)
                        for cls in _CLASSES:
                            module.FakeQuantizeBase.register(cls)

                spec.loader = _Loader()
                return spec
        return None


if _TORCHAO_MODULE in sys.modules:
    register_with_torchao()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())


# ---------------------------------------------------------------------------------------
# torchao QAT: fused fake quantizers


# torch.int2 .. torch.int8 (the dtypes torchao's IntxFakeQuantizeConfig takes) and their widths.
_INT_BITS = {getattr(torch, f"int{b}"): b for b in range(2, 9) if hasattr(torch, f"int{b}")}


def _intx_kind(config) -> str | None:
    """Which fakequant op computes this IntxFakeQuantizeConfig bit for bit, or None:
    ``"symmetric"`` (int2..int8 per group or per output channel, PerAxis(0): fake_quant_per_group),
    ``"asymmetric"`` (int2..int8 per group, torchao's float-domain zero point truncated to int:
    fake_quantize_per_group_affine) or ``"per_token"`` (int8 asymmetric per token:
    fake_quantize_per_token). All of them dynamic, without range learning, with the integer
    zero-point domain, float32 scales (or the input's dtype, ``scale_precision=None`` as the
    base-config flows set it: then float32 inputs only, see the forward), int32 zero points
    and eps unset or a normal float32."""
    from torchao.quantization.granularity import PerAxis, PerGroup, PerToken
    from torchao.quantization.quant_primitives import MappingType, ZeroPointDomain

    if not (config.dtype in _INT_BITS and config.is_dynamic and not config.range_learning and
            config.zero_point_domain == ZeroPointDomain.INT and
            (config.eps is None or config.eps >= torch.finfo(torch.float32).smallest_normal)):
        return None
    per_group = isinstance(config.granularity, PerGroup) or (
        isinstance(config.granularity, PerAxis) and config.granularity.axis == 0)
    if config.mapping_type == MappingType.SYMMETRIC:
        return "symmetric" if per_group and config.scale_precision in (torch.float32, None) else None
    if config.mapping_type != MappingType.ASYMMETRIC or config.scale_precision not in (torch.float32, None) or \
            config.zero_point_precision != torch.int32:
        return None
    if isinstance(config.granularity, PerToken):
        return "per_token" if config.dtype == torch.int8 else None
    return "asymmetric" if isinstance(config.granularity, PerGroup) else None


def _covered(config) -> bool:
    return _intx_kind(config) is not None


@functools.lru_cache(maxsize=None)
def _fused_intx_class():
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    class FusedIntxFakeQuantizer(IntxFakeQuantizer):
        """torchao's IntxFakeQuantizer (same config, ``scale`` and ``zero_point`` attributes,
        so torchao's convert step sees no difference) computed by one fakequant op (see
        ``_intx_kind``): one pass, a 1-bit saved mask."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return x
            config = self.config
            kind = _intx_kind(config)
            bits = _INT_BITS[config.dtype]
            # With scale_precision=None torchao quantizes a 16-bit input with a 16-bit scale and
            # 16-bit products, arithmetic fakequant does not reproduce: torchao's forward there.
            if config.scale_precision is None and x.dtype != torch.float32:
                return super().forward(x)
            if kind == "per_token":
                y, self.scale, self.zero_point = _ops.fake_quantize_per_token(x, eps=config.eps)
                return y
            if x.dim() != 2:  # torchao's per-group path takes 2-d inputs only (its error then)
                return super().forward(x)
            group_size = config.granularity.group_size if isinstance(config.granularity, PerGroup) else x.shape[-1]
            if kind == "asymmetric":
                y, self.scale, self.zero_point = _ops.fake_quantize_per_group_affine(
                    x, group_size, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, eps=config.eps)
                return y
            y, scale = fake_quantize_per_group(x, group_size, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1,
                                               eps=config.eps)
            self.scale = scale  # float32: scale_precision, or the float32 input's dtype
            self.zero_point = torch.zeros_like(scale, dtype=config.zero_point_precision)
            return y

    return FusedIntxFakeQuantizer


_FP8_NAMES = {torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2"}


def _fp8_granularity(config) -> str | None:
    from torchao.quantization.granularity import PerRow, PerTensor

    if config.dtype not in _FP8_NAMES:
        return None
    if isinstance(config.granularity, PerRow):
        return "row"
    return "tensor" if isinstance(config.granularity, PerTensor) else None


@functools.lru_cache(maxsize=None)
def _fused_float8_class():
    from torchao.quantization.qat.fake_quantizer import Float8FakeQuantizer

    class FusedFloat8FakeQuantizer(Float8FakeQuantizer):
        """torchao's Float8FakeQuantizer (PerRow or PerTensor, E4M3 or E5M2) computed by
        :func:`fakequant.fake_quantize_fp8` with torchao's profile: the same values; the
        gradient is the clipped STE (torchao's the identity: they differ only where the abs-max
        was clamped by ``hp_value_ub``)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return x
            c = self.config
            bounds = None if c.hp_value_lb is None and c.hp_value_ub is None else (c.hp_value_lb, c.hp_value_ub)
            y, _ = _ops.fake_quantize_fp8(x, _FP8_NAMES[c.dtype], granularity=_fp8_granularity(c), profile="torchao",
                                          amax_bounds=bounds)
            return y

    return FusedFloat8FakeQuantizer


def _linear_2d(x, weight, bias):
    """torchao's emulated gemm of its MX / NVFP4 QAT linears: 2-d ``mm`` / ``addmm`` of the
    dequantized operands (the same ATen calls, so the same values)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, x2, weight.t()) if bias is not None else torch.mm(x2, weight.t())
    return out.reshape(*x.shape[:-1], out.shape[-1])


_MX_MODES = {"FLOOR": "floor", "CEIL": "ceil", "EVEN": "even", "RCEIL": "rceil"}


def _mx_dtype_name(dtype) -> str | None:
    names = {torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2"}
    if hasattr(torch, "float4_e2m1fn_x2"):
        names[torch.float4_e2m1fn_x2] = "e2m1"
    return names.get(dtype)


def _mx_args(config):
    return _mx_dtype_name(config.dtype), config.block_size, _MX_MODES[config.scaling_mode.name]


@functools.lru_cache(maxsize=None)
def _fused_mx_linear_class():
    from torchao.prototype.qat import MXFakeQuantizedLinear

    class FusedMXFakeQuantizedLinear(MXFakeQuantizedLinear):
        """torchao's MXFakeQuantizedLinear (emulated gemm) with both operands fake-quantized by
        :func:`fakequant.fake_quantize_mx`: the same forward values, a 1-bit mask saved per
        operand instead of the quantized tensors; the gradient is the clipped STE (torchao's
        passes saturated elements too; RCEIL, its default, saturates none)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, w = self.activation_config, self.weight_config
            dtype, block, mode = _mx_args(a)
            xq, _ = _ops.fake_quantize_mx(x.reshape(-1, x.shape[-1]), dtype, block, mode)
            dtype, block, mode = _mx_args(w)
            wq, _ = _ops.fake_quantize_mx(self.weight, dtype, block, mode)
            return _linear_2d(xq.reshape(x.shape), wq, self.bias)

    return FusedMXFakeQuantizedLinear


@functools.lru_cache(maxsize=None)
def _fused_nvfp4_linear_class():
    from torchao.prototype.qat import NVFP4FakeQuantizedLinear

    class FusedNVFP4FakeQuantizedLinear(NVFP4FakeQuantizedLinear):
        """torchao's NVFP4FakeQuantizedLinear with both operands fake-quantized by
        :func:`fakequant.fake_quantize_nvfp4` (torchao's profile) and an emulated gemm: runs on
        any device (torchao's needs a GPU with FP4 ``_scaled_mm``, pytorch/ao#3102), the
        operands bit for bit torchao's quantize-dequantize."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xq, _, _ = _ops.fake_quantize_nvfp4(x.reshape(-1, x.shape[-1]),
                                                self.activation_config.use_per_tensor_scale)
            wq, _, _ = _ops.fake_quantize_nvfp4(self.weight, self.weight_config.use_per_tensor_scale)
            return _linear_2d(xq.reshape(x.shape), wq, self.bias)

    return FusedNVFP4FakeQuantizedLinear


def _mx_covered(module) -> bool:
    return all(c is not None and _mx_dtype_name(c.dtype) is not None and c.scaling_mode.name in _MX_MODES
               for c in (module.activation_config, module.weight_config))


def fuse_torchao_fake_quantizers(model: torch.nn.Module) -> int:
    """Replace, in place, the torchao QAT fake quantizers of ``model`` that fakequant covers by
    subclasses computed with fakequant's fused ops, forward values bit for bit torchao's:

    * ``IntxFakeQuantizer`` (in ``FakeQuantizedLinear`` / ``FakeQuantizedEmbedding``): symmetric
      int2..int8 per group or per output channel, asymmetric per group, int8 asymmetric per token
      (the activations of 8da4w), all dynamic;
    * ``Float8FakeQuantizer``: E4M3 / E5M2, per row or per tensor;
    * ``MXFakeQuantizedLinear`` (``torchao.prototype.qat``): MXFP8 / MXFP4, every scaling mode;
    * ``NVFP4FakeQuantizedLinear``: with or without the per-tensor scale (and then it runs on
      the CPU and on GPUs before Blackwell, where torchao's cannot).

    The gradient is the clipped STE on a 1-bit mask (torchao's int quantizers give it times
    ``fp32(1 / s) * s``, within one ulp of 1; its FP8 / MX / NVFP4 ones pass saturated elements
    too). Others stay torchao's. Returns how many modules were replaced. Training then runs as
    before, and torchao's convert step (``QATConfig(base_config, step="convert")``) produces the
    same model."""
    from torchao.prototype.qat import MXFakeQuantizedLinear, NVFP4FakeQuantizedLinear
    from torchao.quantization.qat.fake_quantizer import Float8FakeQuantizer, IntxFakeQuantizer

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = None
            if type(child) is IntxFakeQuantizer and _covered(child.config):
                new = _fused_intx_class()(child.config)
                new.enabled = child.enabled
                new.scale, new.zero_point = child.scale, child.zero_point
            elif type(child) is Float8FakeQuantizer and _fp8_granularity(child.config) is not None:
                new = _fused_float8_class()(child.config)
                new.enabled = child.enabled
            elif type(child) in (MXFakeQuantizedLinear, NVFP4FakeQuantizedLinear):
                mx = type(child) is MXFakeQuantizedLinear
                if mx and not _mx_covered(child):
                    continue
                # The same module (parameters, configs, hooks) with the fused forward.
                child.__class__ = _fused_mx_linear_class() if mx else _fused_nvfp4_linear_class()
                count += 1
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count
