"""Finding and loading the compiled op library."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_LIBRARY_NAME = "libfakequant_ops.so"
_loaded: str | None = None


def library_path() -> str:
    """The op library to load: $FAKEQUANT_LIBRARY if set, else the one installed with
    this package."""
    override = os.environ.get("FAKEQUANT_LIBRARY")
    if override:
        if not Path(override).is_file():
            raise ImportError(f"FAKEQUANT_LIBRARY={override!r} does not name a file")
        return override
    candidate = Path(__file__).resolve().parent / _LIBRARY_NAME
    if not candidate.is_file():
        raise ImportError(
            f"fakequant's op library {_LIBRARY_NAME} was not found next to {__file__}; "
            "install the package with `pip install --no-build-isolation .` or point "
            "FAKEQUANT_LIBRARY at a built libfakequant_ops.so"
        )
    return str(candidate)


def load_library() -> str:
    """Load the op library once (torch.ops.load_library) and return its path."""
    global _loaded
    if _loaded is None:
        path = library_path()
        torch.ops.load_library(path)
        _loaded = path
    return _loaded
