"""fakequant.abs_max / min_max against torch.amax / torch.aminmax."""

from __future__ import annotations

import pytest
import torch

import fakequant
from conftest import DEVICES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]


def make_input(shape, dtype, device, layout="contiguous"):
    x = (torch.randn(shape, device=device) * 3.0 + 0.5).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(0, -1)
    elif layout == "strided":
        x = torch.stack([x, x], dim=-1)[..., 1]
    return x


def other_dims(x, axis):
    return [d for d in range(x.dim()) if d != axis % x.dim()]


def reference(x, axis):
    xf = x.float()
    if axis is None:
        return xf.abs().amax(), xf.amin(), xf.amax()
    dims = other_dims(x, axis)
    return xf.abs().amax(dims), xf.amin(dims), xf.amax(dims)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", [None, 0, 1, 2, 3, -1])
def test_match_aten(device, dtype, layout, axis):
    x = make_input((3, 6, 5, 7), dtype, device, layout)
    ref_abs, ref_min, ref_max = reference(x, axis)
    got_abs = fakequant.abs_max(x, axis)
    got_min, got_max = fakequant.min_max(x, axis)
    for got, ref in ((got_abs, ref_abs), (got_min, ref_min), (got_max, ref_max)):
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert torch.equal(got, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 4097, 300_001])
def test_odd_sizes_whole_tensor(device, numel):
    x = torch.randn(numel, device=device) - 0.25
    assert torch.equal(fakequant.abs_max(x), x.abs().amax())
    mn, mx = fakequant.min_max(x)
    assert torch.equal(mn, x.amin()) and torch.equal(mx, x.amax())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sign", ["negative", "positive", "signed_zeros"])
def test_abs_max_from_either_side(device, dtype, sign):
    """The largest magnitude on the negative side, on the positive side, or only zeros of both
    signs, at a length with a vector body and a tail, whole tensor and per channel."""
    x = torch.randn(4, 1003, device=device).abs().to(dtype)
    if sign == "negative":
        x = -x
        x[:, 0] = 0.5 * x[:, 0]  # a positive value smaller than the largest negative one
        x[:, 0] = x[:, 0].abs()
    elif sign == "signed_zeros":
        x = torch.zeros_like(x)
        x[:, ::2] = -0.0
    assert torch.equal(fakequant.abs_max(x), x.float().abs().amax())
    assert torch.equal(fakequant.abs_max(x, 0), x.float().abs().amax(1))
    assert not torch.signbit(fakequant.abs_max(x)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,axis", [((2000, 3), 1), ((3, 70001), 0), ((5, 1, 9), 1), ((1, 4), 0), ((7,), 0)])
def test_odd_channel_shapes(device, shape, axis):
    x = torch.randn(shape, device=device)
    dims = other_dims(x, axis)
    assert torch.equal(fakequant.abs_max(x, axis), x.abs().amax(dims) if dims else x.abs())
    mn, mx = fakequant.min_max(x, axis)
    assert torch.equal(mn, x.amin(dims) if dims else x) and torch.equal(mx, x.amax(dims) if dims else x)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_gives_identity(device):
    x = torch.empty(0, 5, device=device)
    assert fakequant.abs_max(x).item() == 0.0
    mn, mx = fakequant.min_max(x)
    assert mn.item() == float("inf") and mx.item() == float("-inf")
    assert torch.equal(fakequant.abs_max(x, 1), torch.zeros(5, device=device))
    mn, mx = fakequant.min_max(x, 1)
    assert (mn == float("inf")).all() and (mx == float("-inf")).all()
    assert fakequant.abs_max(x, 0).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_like_aten(device, dtype):
    x = make_input((4, 9), dtype, device)
    x[2, 5] = float("nan")
    x[1, 3] = float("inf")
    ref_abs, ref_min, ref_max = reference(x, 0)
    got = fakequant.abs_max(x, 0)
    assert torch.isnan(got[2]) and torch.isnan(ref_abs[2])
    assert torch.equal(got[[0, 1, 3]], ref_abs[[0, 1, 3]]) and got[1] == float("inf")
    mn, mx = fakequant.min_max(x, 0)
    assert torch.isnan(mn[2]) and torch.isnan(mx[2])
    assert torch.equal(mn[[0, 1, 3]], ref_min[[0, 1, 3]]) and torch.equal(mx[[0, 1, 3]], ref_max[[0, 1, 3]])
    assert torch.isnan(fakequant.abs_max(x)) and all(torch.isnan(t) for t in fakequant.min_max(x))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: fakequant.abs_max(torch.ones(3, dtype=torch.int32)), r"abs_max: input must be float32"),
        (lambda: fakequant.min_max(torch.ones(3, dtype=torch.float64)), r"min_max: input must be float32"),
        (lambda: fakequant.abs_max(torch.ones(3, 4), 2), r"axis must lie in \[-2, 1\]"),
        (lambda: fakequant.min_max(torch.ones(3, 4), -3), r"axis must lie in \[-2, 1\]"),
        (lambda: fakequant.abs_max(torch.tensor(1.0), 0), r"at least 1 dimension"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()

