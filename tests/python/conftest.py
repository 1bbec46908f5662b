import os

import numpy as np
import pytest
import torch

import fakequant  # noqa: F401  (loads the op library)

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")),
]


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random data for every test; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("FAKEQUANT_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    np.random.seed(seed)  # the tests draw magnitudes with numpy too
    print(f"seed={seed}")
    yield


def saved_for_backward(fn):
    """fn()'s result and the tensors autograd saved for backward while it ran."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, saved
