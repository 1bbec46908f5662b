"""torchao's pt2e flow recognises fakequant's quantizers: they are registered as virtual
subclasses of ``torchao.quantization.pt2e.FakeQuantizeBase``, at once if torchao is imported,
else right after it is (an import hook), without importing torchao here."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

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
