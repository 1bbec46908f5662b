"""fakequant.fake_quant_per_tensor against ATen's fake-quant ops and the written-out formula."""

from __future__ import annotations

import math

import pytest
import torch

import fakequant
from conftest import DEVICES, HAS_CUDA, saved_for_backward
from reference import fake_quant_formula, make_input, random_qparams, unpack_mask

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (quant_min, quant_max) for 2..16 bits, signed and unsigned, plus narrow ranges.
RANGES = [(-2, 1), (0, 3), (-8, 7), (0, 15), (-128, 127), (0, 255), (-127, 127),
          (-2048, 2047), (0, 4095), (-32768, 32767), (0, 65535)]
SHAPES = [(1,), (7,), (8,), (9,), (3, 5, 7), (2, 3, 17, 19), (1031,), (0,), (4, 0, 3)]

ATEN_HAS_PER_TENSOR = hasattr(torch, "fake_quantize_per_tensor_affine")
needs_aten = pytest.mark.skipif(not ATEN_HAS_PER_TENSOR, reason="ATen fake_quantize_per_tensor_affine is gone")


def assert_bit_exact(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected), (actual - expected).abs().max()


def quantize_as_the_formula(x, qmin, qmax):
    """Random qparams for [qmin, qmax] and x fake-quantized with them: values and mask bit for bit
    the formula's. Returns (scale, zp, y, packed mask, the formula's mask)."""
    scale, zp = random_qparams(x, qmin, qmax)
    y, packed = fakequant.fake_quantize_per_tensor_with_mask(x, scale, zp, qmin, qmax)
    ref_y, ref_mask = fake_quant_formula(x, scale, zp, qmin, qmax)
    assert_bit_exact(y, ref_y)
    assert torch.equal(unpack_mask(packed, y), ref_mask)
    return scale, zp, y, packed, ref_mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_matches_formula_and_aten_every_range(device, dtype, qmin, qmax):
    x = make_input((5, 301), dtype, device)
    scale, zp, y, packed, ref_mask = quantize_as_the_formula(x, qmin, qmax)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(x.numel() / 8)
    assert ref_mask.any() and not ref_mask.all()  # both branches of the STE exercised
    if ATEN_HAS_PER_TENSOR:
        aten_y, aten_mask = torch.ops.aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            x, scale, zp, torch.ones(1, dtype=torch.long, device=device), qmin, qmax)
        assert_bit_exact(y, aten_y)
        assert torch.equal(unpack_mask(packed, y), aten_mask)
        assert_bit_exact(y, torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided", "channels_last"])
def test_shapes_and_layouts(device, dtype, shape, layout):
    x = make_input(shape, dtype, device, layout)
    scale, zp, y, _, _ = quantize_as_the_formula(x, -128, 127)
    if x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)  # layout kept, no copy
    if ATEN_HAS_PER_TENSOR:
        assert_bit_exact(y, torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_half_away_rounding(device, dtype):
    # Exact ties: x = (k + 0.5) * scale with a power-of-two scale.
    k = torch.arange(-40, 40, device=device, dtype=torch.float32)
    x = ((k + 0.5) * 0.25).to(dtype)
    scale = torch.tensor([0.25], device=device)
    zp = torch.tensor([0], dtype=torch.int32, device=device)
    y_even = fakequant.fake_quantize_per_tensor(x, scale, zp, -16, 15)
    y_away = fakequant.fake_quantize_per_tensor(x, scale, zp, -16, 15, rounding="half_away")
    # written out: half away from zero moves every tie outward
    # (k + 0.5 rounds to k + 1 for k >= 0 and to k for k < 0)
    expected_away = (torch.where(k >= 0, k + 1, k)).clamp(-16, 15) * 0.25
    assert_bit_exact(y_away, expected_away.to(dtype))
    assert_bit_exact(y_even, (torch.round(k + 0.5)).clamp(-16, 15).mul(0.25).to(dtype))
    assert not torch.equal(y_even, y_away)
    ref_y, _ = fake_quant_formula(x, scale, zp, -16, 15, "half_away")
    assert_bit_exact(y_away, ref_y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_inputs(device, dtype):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -0.5], dtype=dtype, device=device)
    scale = torch.tensor([0.5], device=device)
    zp = torch.tensor([1], dtype=torch.int32, device=device)
    y, packed = fakequant.fake_quantize_per_tensor_with_mask(x, scale, zp, -8, 7)
    assert torch.isnan(y[0])                                      # NaN -> NaN
    assert y[1].item() == (7 - 1) * 0.5 and y[2].item() == (-8 - 1) * 0.5  # +-inf saturate
    assert y[3].item() == 1.0 and y[4].item() == -0.5
    assert unpack_mask(packed, y).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
def test_gradient_is_grad_times_aten_mask(device, dtype, layout):
    x = make_input((2, 3, 9, 11), dtype, device, layout).requires_grad_()
    scale, zp = random_qparams(x, 0, 255)
    y = fakequant.fake_quantize_per_tensor(x, scale, zp, 0, 255)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    _, ref_mask = fake_quant_formula(x.detach(), scale, zp, 0, 255)
    assert_bit_exact(dx, dy * ref_mask)
    if ATEN_HAS_PER_TENSOR:
        _, aten_mask = torch.ops.aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            x.detach(), scale, zp, torch.ones(1, dtype=torch.long, device=device), 0, 255)
        assert_bit_exact(dx, dy * aten_mask)
        xa = x.detach().clone().requires_grad_()
        (dxa,) = torch.autograd.grad(torch.fake_quantize_per_tensor_affine(xa, scale, zp, 0, 255), xa, dy)
        assert_bit_exact(dx, dxa)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_with_differently_strided_grad(device):
    # The upstream gradient may arrive in another layout than the output: still correct.
    x = make_input((2, 4, 5, 6), torch.float32, device, "channels_last").requires_grad_()
    scale, zp = random_qparams(x, -128, 127)
    y = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127)
    dy = torch.randn(y.shape, device=device)  # contiguous, y is channels_last
    (dx,) = torch.autograd.grad(y, x, dy)
    _, ref_mask = fake_quant_formula(x.detach(), scale, zp, -128, 127)
    assert_bit_exact(dx, dy * ref_mask)


def test_saved_mask_is_one_bit_per_element():
    x = torch.randn(1000, 64, requires_grad=True)
    scale, zp = random_qparams(x, -128, 127)
    y, saved = saved_for_backward(lambda: fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127))
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel() // 8  # the mask, nothing else
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert_bit_exact(dx, fake_quant_formula(x.detach(), scale, zp, -128, 127)[1].float())


def test_masked_grad_op_against_formula():
    g = torch.randn(3, 37)
    packed = torch.randint(0, 256, ((g.numel() + 7) // 8,), dtype=torch.uint8)
    out = fakequant.masked_grad(g, packed)
    assert_bit_exact(out, g * unpack_mask(packed, g))


# --- custom-op machinery ------------------------------------------------------------


# --- bad input -------------------------------------------------------------------------


def _args(device="cpu", **over):
    a = dict(input=torch.randn(10, device=device), scale=torch.tensor([0.1], device=device),
             zero_point=torch.tensor([0], dtype=torch.int32, device=device), quant_min=-128, quant_max=127,
             rounding="half_even")
    a.update(over)
    return a


def _call(a):
    return torch.ops.fakequant.fake_quant_per_tensor(
        a["input"], a["scale"], a["zero_point"], a["quant_min"], a["quant_max"], a["rounding"])


BAD_INPUTS_ANY_DEVICE = [
    (dict(scale=torch.tensor([0.1], dtype=torch.float64)), r"scale must be a Float tensor"),
    (dict(zero_point=torch.tensor([0], dtype=torch.int64)), r"zero_point must be a Int tensor"),
    (dict(zero_point=torch.tensor([0.0])), r"zero_point must be a Int tensor"),
    (dict(scale=torch.tensor([0.1, 0.2])), r"scale must have exactly 1 element"),
    (dict(scale=torch.tensor([])), r"scale must have exactly 1 element"),
    (dict(zero_point=torch.zeros(2, dtype=torch.int32)), r"zero_point must have exactly 1 element"),
    (dict(quant_min=5, quant_max=4), r"quant_min \(5\) must be <= quant_max \(4\)"),
    (dict(quant_min=-32768, quant_max=32768), r"at most 65536 \(16 bits\)"),
    (dict(quant_min=0, quant_max=100000), r"quant_min and quant_max must lie in"),
    (dict(rounding="nearest"), r"rounding must be one of 'half_even', 'half_away', 'stochastic', got 'nearest'"),
    (dict(input=torch.randint(0, 5, (10,))), r"input must be float32, float16 or bfloat16"),
    (dict(input=torch.randn(10, dtype=torch.float64)), r"input must be float32, float16 or bfloat16"),
]


@pytest.mark.parametrize("over,message", BAD_INPUTS_ANY_DEVICE)
def test_bad_input_raises_naming_the_argument(over, message):
    with pytest.raises(RuntimeError, match=message):
        _call(_args(**over))


@pytest.mark.parametrize("over,message", [
    (dict(scale=torch.tensor([0.0])), r"scale must be finite and >= 1.17549435e-38"),
    (dict(scale=torch.tensor([-0.1])), r"scale must be finite and >= 1.17549435e-38"),
    (dict(scale=torch.tensor([float("inf")])), r"scale must be finite"),
    (dict(scale=torch.tensor([float("nan")])), r"scale must be finite"),
    (dict(zero_point=torch.tensor([200], dtype=torch.int32)), r"zero_point \(200\) must lie in \[quant_min, quant_max\] = \[-128, 127\]"),
])
def test_bad_qparam_values_on_cpu(over, message):
    with pytest.raises(RuntimeError, match=message):
        _call(_args(**over))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_tensors_on_different_devices():
    with pytest.raises(RuntimeError, match=r"scale must be on the same device as input"):
        _call(_args("cuda", scale=torch.tensor([0.1])))
    with pytest.raises(RuntimeError, match=r"zero_point must be on the same device as input"):
        _call(_args("cuda", zero_point=torch.tensor([0], dtype=torch.int32)))


def test_tensors_on_different_devices_meta():
    # Device mismatch is checked before any data is touched; meta stands in for a second device.
    with pytest.raises(RuntimeError, match=r"scale must be on the same device as input"):
        _call(_args(scale=torch.tensor([0.1], device="meta")))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_bad_qparam_values_on_cuda_poison_without_sync():
    # Reading the values would need a host sync: the kernel writes NaN and a zero mask instead.
    a = _args("cuda", scale=torch.tensor([-1.0], device="cuda"))
    with torch.cuda._DeviceGuard(0):
        torch.cuda.set_sync_debug_mode("error")
        try:
            y, packed = _call(a)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isnan(y).all() and (packed == 0).all()

