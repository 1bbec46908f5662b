"""fakequant.fake_quant_per_channel against ATen's per-channel fake quant and the formula."""

from __future__ import annotations

import pytest
import torch

import fakequant
from conftest import DEVICES, HAS_CUDA
from reference import fake_quant_per_channel_formula, make_input, random_channel_qparams, unpack_mask

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 3), (-32768, 32767)]
ATEN_HAS_PER_CHANNEL = hasattr(torch, "fake_quantize_per_channel_affine")


def check(x, scale, zp, axis, qmin, qmax, rounding="half_even"):
    y, packed = fakequant.fake_quantize_per_channel_with_mask(x, scale, zp, axis, qmin, qmax, rounding)
    ref_y, ref_mask = fake_quant_per_channel_formula(x, scale, zp, axis, qmin, qmax, rounding)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, ref_y), (y.float() - ref_y.float()).abs().max()
    assert torch.equal(unpack_mask(packed, y), ref_mask)
    if ATEN_HAS_PER_CHANNEL and rounding == "half_even":
        aten_y, aten_mask = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(
            x, scale, zp, axis % x.dim(), qmin, qmax)
        assert torch.equal(y, aten_y)
        assert torch.equal(unpack_mask(packed, y), aten_mask)
    return y, packed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "strided"])
@pytest.mark.parametrize("float_zp", [False, True])
def test_matches_formula_and_aten(device, dtype, axis, layout, float_zp):
    x = make_input((3, 6, 5, 7), dtype, device, layout)
    scale, zp = random_channel_qparams(x, axis, -128, 127, float_zp)
    y, _ = check(x, scale, zp, axis, -128, 127)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
def test_ranges_and_rounding(device, qrange, rounding):
    x = make_input((4, 33, 9), torch.float32, device, "contiguous")
    for float_zp in (False, True):
        scale, zp = random_channel_qparams(x, 1, *qrange, float_zero_point=float_zp)
        check(x, scale, zp, 1, *qrange, rounding=rounding)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,axis", [((1,), 0), ((7,), 0), ((5, 1), 1), ((0, 4), 1), ((2, 3), 0), ((9, 8, 1, 3), 2)])
def test_odd_and_empty_shapes(device, shape, axis):
    x = torch.randn(shape, device=device)
    scale, zp = random_channel_qparams(x, axis, -128, 127)
    check(x, scale, zp, axis, -128, 127)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradient_is_grad_times_mask(device, layout):
    x = make_input((2, 8, 5, 5), torch.float32, device, layout).requires_grad_()
    scale, zp = random_channel_qparams(x, 1, -8, 7)
    y = fakequant.fake_quantize_per_channel(x, scale, zp, 1, -8, 7)
    dy = torch.randn(y.shape, device=device)  # contiguous even where y is channels_last
    (dx,) = torch.autograd.grad(y, x, dy)
    _, ref_mask = fake_quant_per_channel_formula(x.detach(), scale, zp, 1, -8, 7)
    assert torch.equal(dx, dy * ref_mask)
    if ATEN_HAS_PER_CHANNEL:
        xa = x.detach().clone().requires_grad_()
        (dxa,) = torch.autograd.grad(torch.fake_quantize_per_channel_affine(xa, scale, zp, 1, -8, 7), xa, dy)
        assert torch.equal(dx, dxa)


def _call(x=None, scale=None, zp=None, axis=1, qmin=-128, qmax=127, rounding="half_even"):
    x = torch.randn(2, 3, 4) if x is None else x
    scale = torch.full((3,), 0.1) if scale is None else scale
    zp = torch.zeros(3, dtype=torch.int32) if zp is None else zp
    return torch.ops.fakequant.fake_quant_per_channel(x, scale, zp, axis, qmin, qmax, rounding)


@pytest.mark.parametrize("kwargs,message", [
    (dict(axis=3), r"axis must lie in \[-3, 2\] for a 3-d input, got 3"),
    (dict(axis=-4), r"axis must lie in \[-3, 2\]"),
    (dict(x=torch.tensor(1.0), scale=torch.ones(1), zp=torch.zeros(1, dtype=torch.int32), axis=0),
     r"at least 1 dimension"),
    (dict(scale=torch.full((4,), 0.1)), r"scale must be a 1-D tensor of input.size\(1\) = 3 elements, got shape \[4\]"),
    (dict(zp=torch.zeros(2, dtype=torch.int32)), r"zero_point must be a 1-D tensor of input.size\(1\) = 3 elements"),
    (dict(scale=torch.full((3,), 0.1, dtype=torch.float64)), r"scale must be a Float tensor"),
    (dict(zp=torch.zeros(3, dtype=torch.int64)), r"zero_point must be an Int \(integer zero point\) or Float"),
    (dict(x=torch.randint(0, 3, (2, 3, 4))), r"input must be float32, float16 or bfloat16"),
    (dict(qmin=3, qmax=2), r"quant_min \(3\) must be <= quant_max \(2\)"),
    (dict(rounding="nearest"), r"rounding must be one of 'half_even', 'half_away'"),
    (dict(scale=torch.tensor([0.1, 0.0, 0.1])), r"channel 1: scale must be finite and >= 1.17549435e-38"),
    (dict(zp=torch.tensor([0, 0, 300], dtype=torch.int32)), r"channel 2: zero_point \(300\) must lie in"),
    (dict(zp=torch.tensor([0.0, -200.5, 0.0])), r"channel 1: zero_point \(-200.5\) must lie in"),
    (dict(scale=torch.full((3,), 0.1, device="meta")), r"scale must be on the same device as input"),
])
def test_bad_input_raises_naming_the_argument(kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        _call(**kwargs)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_no_sync_and_bad_channel_poisons_only_that_channel():
    x = torch.randn(4, 3, 16, device="cuda")
    scale = torch.tensor([0.1, -1.0, 0.1], device="cuda")
    zp = torch.zeros(3, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, packed = fakequant.fake_quantize_per_channel_with_mask(x, scale, zp, 1, -128, 127)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isnan(y[:, 1]).all() and not torch.isnan(y[:, [0, 2]]).any()
    assert not unpack_mask(packed, y)[:, 1].any()
