"""``fakequant.nn``: QAT modules (``fakequant.nn.qat``)."""

from . import qat  # noqa: F401
