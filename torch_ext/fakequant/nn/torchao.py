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


def _covered(config) -> bool:
    """Whether fakequant computes this IntxFakeQuantizeConfig bit for bit: symmetric int2..int8
    per group (or per output channel, PerAxis(0)), dynamic scales in float32 (or in the
    input's dtype, ``scale_precision=None`` as the base-config flows set it: then float32
    inputs only, see the forward), the integer zero-point domain, no range learning, eps unset
    or a normal float32."""
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType, ZeroPointDomain

    return (isinstance(config.granularity, PerGroup) or
            (isinstance(config.granularity, PerAxis) and config.granularity.axis == 0)) and \
        config.mapping_type == MappingType.SYMMETRIC and config.dtype in _INT_BITS and config.is_dynamic and \
        not config.range_learning and config.scale_precision in (torch.float32, None) and \
        config.zero_point_domain == ZeroPointDomain.INT and \
        (config.eps is None or config.eps >= torch.finfo(torch.float32).smallest_normal)


@functools.lru_cache(maxsize=None)
def _fused_intx_class():
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    class FusedIntxFakeQuantizer(IntxFakeQuantizer):
        """torchao's IntxFakeQuantizer (same config, ``scale`` and ``zero_point`` attributes,
        so torchao's convert step sees no difference) computed by
        :func:`fakequant.fake_quantize_per_group`: one pass, a 1-bit saved mask."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return x
            # torchao's per-group path takes 2-d inputs only (its error then); with
            # scale_precision=None it quantizes a 16-bit input with a 16-bit scale and 16-bit
            # products, arithmetic fakequant does not reproduce: torchao's forward for both.
            if x.dim() != 2 or (self.config.scale_precision is None and x.dtype != torch.float32):
                return super().forward(x)
            config = self.config
            group_size = config.granularity.group_size if isinstance(config.granularity, PerGroup) else x.shape[-1]
            bits = _INT_BITS[config.dtype]
            y, scale = fake_quantize_per_group(x, group_size, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1,
                                               eps=config.eps)
            self.scale = scale  # float32: scale_precision, or the float32 input's dtype
            self.zero_point = torch.zeros_like(scale, dtype=config.zero_point_precision)
            return y

    return FusedIntxFakeQuantizer


def fuse_torchao_fake_quantizers(model: torch.nn.Module) -> int:
    """Replace, in place, every ``torchao.quantization.qat`` ``IntxFakeQuantizer`` of ``model``
    (for example the weight quantizers ``QATConfig(..., step="prepare")`` put in
    ``FakeQuantizedLinear`` / ``FakeQuantizedEmbedding``) whose configuration fakequant covers
    (symmetric int2..int8 per group or per output channel, dynamic) by a subclass computed with
    fakequant's fused op: forward values and scales bit for bit torchao's, the gradient the
    clipped STE (torchao's equals it times ``fp32(1 / s) * s``, within one ulp of 1). Other
    quantizers (asymmetric, per token, FP8) stay torchao's. Returns how many were replaced.
    Training then runs as before, and torchao's convert step (``QATConfig(base_config,
    step="convert")``) produces the same model."""
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    fused = _fused_intx_class()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is IntxFakeQuantizer and _covered(child.config):
                new = fused(child.config)
                new.enabled = child.enabled
                new.scale, new.zero_point = child.scale, child.zero_point
                setattr(parent, name, new)
                count += 1
    return count
