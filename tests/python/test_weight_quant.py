"""fakequant.fake_quant_weight_abs_max against the ATen composite (abs-amax, scale, per-channel
fake quant), PyTorch's per-channel symmetric observer and the formula written out in reference.py;
fakequant.fake_quant_per_group against torchao's IntxFakeQuantizer bit for bit and the formula."""

from __future__ import annotations

import math

import pytest
import torch

import fakequant
from conftest import DEVICES, HAS_CUDA, saved_for_backward
from reference import per_group_formula, unpack_mask, weight_abs_max_formula

OP = torch.ops.fakequant.fake_quant_weight_abs_max
EPS = torch.finfo(torch.float32).eps
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Symmetric ranges: narrow (quant_min == -quant_max, Paddle bin_cnt) and full (PyTorch qint8), 8 and 4 bits.
RANGES = [(-127, 127), (-128, 127), (-7, 7), (-8, 7)]
ATEN_HAS_PER_CHANNEL = hasattr(torch, "fake_quantize_per_channel_affine")
try:
    from torch.ao.quantization import PerChannelMinMaxObserver
except ImportError:  # torch.ao's legacy quantization stack is being retired
    PerChannelMinMaxObserver = None

# (shape, axis): conv weights [64,3,7,7] (L = 147, odd), [256,64,1,1], depthwise [32,1,3,3]
# (L = 9), a Linear weight (4096 x 1024 scaled down), and an odd 3-d shape; every axis.
SHAPES_AXES = [(s, a) for s in [(64, 3, 7, 7), (256, 64, 1, 1), (32, 1, 3, 3), (512, 128), (9, 40, 3)]
               for a in range(len(s))] + [((512, 128), -1), ((64, 3, 7, 7), -4)]


def make_weight(shape, dtype, device, layout="contiguous"):
    """Fresh random weight with a few outliers (so channels differ in scale by orders of magnitude)."""
    w = torch.randn(shape, device=device) * torch.rand(shape[0], *([1] * (len(shape) - 1)), device=device).add(0.05)
    if w.numel() > 3:
        w.view(-1)[0] = 40.0
        w.view(-1)[w.numel() // 2] = -25.0
    w = w.to(dtype)
    if layout == "channels_last" and w.dim() == 4:
        w = w.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and w.dim() >= 2:
        w = w.transpose(0, -1).contiguous().transpose(0, -1)  # same shape, reversed memory order
    elif layout == "strided":
        w = torch.stack([w, -w], dim=-1)[..., 0]  # not dense: made contiguous by the op
    return w


def reduce_dims(w, axis):
    return [d for d in range(w.dim()) if d != axis % w.dim()]


def aten_composite(w, axis, qmin, qmax, eps=EPS):
    """The ATen way: scale = clamp(amax(|w|) / ((qmax - qmin) / 2), min=eps) in float32, then
    fake_quantize_per_channel_affine(_cachemask) with zero points 0. The divisor is a tensor on w's
    device: on CUDA, ATen divides by a Python scalar as a multiply by its reciprocal (possibly one ulp
    off the quotient that PyTorch's CPU observer and fakequant compute)."""
    ax = axis % w.dim()
    dims = reduce_dims(w, ax)
    a = w.float().abs()
    a = a.amax(dim=dims) if dims else a
    half = torch.tensor((qmax - qmin) / 2, dtype=torch.float32, device=w.device)
    scale = torch.clamp(a / half, min=eps)
    zeros = torch.zeros_like(scale, dtype=torch.int32)
    y, mask = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(w, scale, zeros, ax, qmin, qmax)
    return y, mask, scale


def check(w, axis, qmin, qmax, rounding="half_even", eps=EPS):
    y, packed, scale = OP(w, axis, qmin, qmax, rounding, eps)
    ref_y, ref_mask, ref_scale = weight_abs_max_formula(w, axis, qmin, qmax, rounding, eps)
    assert y.dtype == w.dtype and y.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (w.shape[axis],)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(w.numel() / 8)
    assert torch.equal(scale, ref_scale), (scale - ref_scale).abs().max()
    assert torch.equal(y, ref_y), (y.float() - ref_y.float()).abs().max()
    assert torch.equal(unpack_mask(packed, y), ref_mask)
    if ATEN_HAS_PER_CHANNEL and rounding == "half_even" and w.numel() > 0:
        aten_y, aten_mask, aten_scale = aten_composite(w, axis, qmin, qmax, eps)
        assert torch.equal(scale, aten_scale)
        assert torch.equal(y, aten_y)
        assert torch.equal(unpack_mask(packed, y), aten_mask)
    return y, packed, scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_matches_aten_composite_and_formula(device, dtype, shape, axis, layout):
    w = make_weight(shape, dtype, device, layout)
    for qmin, qmax in RANGES:
        y, packed, scale = check(w, axis, qmin, qmax)
        assert y.stride() == w.stride()  # layout kept, no copy
        assert unpack_mask(packed, y).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qrange", [(-127, 127), (-128, 127), (-7, 7), (-8, 7), (-1, 1), (-2, 1),
                                    (-2047, 2047), (-32768, 32767)])
def test_every_range_width(device, qrange):
    w = make_weight((24, 5, 3), torch.float32, device)
    for axis in (0, 1, 2):
        check(w, axis, *qrange)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_abs_max_element_lands_on_the_range_end(device, dtype):
    # Written out without any scale formula: in a narrow range the largest |w| of a channel
    # quantises to exactly +-quant_max (x / scale = quant_max up to one rounding), and the scale
    # satisfies scale * quant_max == absmax to within one float32 ulp.
    w = make_weight((48, 33), dtype, device)
    y, packed, scale = OP(w, 0, -127, 127)
    idx = w.float().abs().argmax(dim=1, keepdim=True)
    top = w.float().gather(1, idx).squeeze(1)
    assert torch.equal(y.float().gather(1, idx).squeeze(1), (torch.sign(top) * 127 * scale).to(dtype).float())
    assert unpack_mask(packed, y).gather(1, idx).all()
    rel = (scale.double() * 127 - top.abs().double()).abs() / top.abs().double()
    assert (rel <= 2.0 ** -23).all()


@pytest.mark.skipif(PerChannelMinMaxObserver is None, reason="torch.ao.quantization is gone")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_scale_equals_pytorch_per_channel_symmetric_observer(device, dtype, axis, qmin, qmax):
    w = make_weight((16, 8, 3, 3), dtype, device)
    obs = PerChannelMinMaxObserver(ch_axis=axis % w.dim(), dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                   quant_min=qmin, quant_max=qmax)
    # On the CPU: ATen's CUDA division by a Python scalar multiplies by the reciprocal, which can
    # be one ulp off the quotient (docs/numerics.md).
    obs(w.cpu())
    obs_scale, obs_zp = obs.calculate_qparams()
    _, _, scale = OP(w, axis, qmin, qmax)
    assert torch.equal(scale.cpu(), obs_scale)
    assert (obs_zp == 0).all()
    if ATEN_HAS_PER_CHANNEL:
        y, _, _ = OP(w, axis, qmin, qmax)
        ref = torch.fake_quantize_per_channel_affine(w, obs_scale.to(device), obs_zp.to(device, torch.int32),
                                                     axis % w.dim(), qmin, qmax)
        assert torch.equal(y, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,axis", [((1,), 0), ((7,), 0), ((1, 1), 1), ((1, 9), 0), ((1, 100003), 0),
                                        ((5, 1), 1), ((9, 8, 1, 3), 2), ((3, 5), 1), ((0, 4), 1), ((0, 4), 0),
                                        ((4, 0), 0), ((2, 0, 3), 2)])
def test_odd_one_channel_and_empty_shapes(device, shape, axis):
    w = torch.randn(shape, device=device) * 2
    y, packed, scale = check(w, axis, -127, 127)
    if w.numel() == 0:
        assert torch.equal(scale, torch.full((w.shape[axis],), EPS, device=device))  # empty channel: eps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,layout", [
    ((64, 24), 0, "contiguous"),       # one pass, 24 | 8: one channel per block
    ((40, 9), 0, "contiguous"),        # one pass, 8 channels of 9 per block
    ((7, 6), 0, "contiguous"),         # one pass, 4 channels of 6 per block, last block short
    ((1, 1001), 0, "contiguous"),      # one channel, odd length
    ((6, 20000), 0, "contiguous"),     # channels longer than the on-chip tile: long-run reduction
    ((3, 40000), 1, "contiguous"),     # channel fastest, long rows
    ((700, 3), 1, "contiguous"),       # short rows, folded
    ((12, 200, 5), 1, "contiguous"),   # middle axis
    ((1024, 1030), 0, "transposed"),   # transposed Linear weight: parallel partial maxima
    ((16, 8, 3, 3), 0, "channels_last"),
    ((16, 8, 3, 3), 1, "channels_last"),
])
def test_every_kernel_path(device, dtype, shape, axis, layout):
    w = make_weight(shape, dtype, device, layout)
    check(w, axis, -127, 127)
    check(w, axis, -8, 7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_and_strided_inputs(device, dtype):
    base = make_weight((33 * 16 + 1,), dtype, device)
    w = base[1:].view(33, 16)  # storage offset of one element: not 16-byte aligned
    assert w.data_ptr() % 16 != 0
    check(w, 0, -127, 127)
    ws = make_weight((8, 6, 5), dtype, device, "strided")
    assert not ws.is_contiguous()
    y, _, _ = check(ws, 1, -128, 127)
    assert y.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_half_away_rounding(device, dtype):
    # Channel 0: absmax 31.75 -> narrow scale 31.75 / 127 = 0.25 exactly; values (k + 0.5) * 0.25
    # are exact ties, which half_away rounds outward and half_even to even.
    k = torch.arange(-60, 60, device=device, dtype=torch.float32)
    row0 = torch.cat([(k + 0.5) * 0.25, torch.tensor([31.75], device=device)])
    w = torch.stack([row0, torch.randn(121, device=device)]).to(dtype)
    y_even, _, scale = check(w, 0, -127, 127, "half_even")
    y_away, _, _ = check(w, 0, -127, 127, "half_away")
    assert scale[0].item() == 0.25
    expected_away = torch.where(k >= 0, k + 1, k) * 0.25
    assert torch.equal(y_away[0, :120].float(), expected_away.to(dtype).float())
    assert torch.equal(y_even[0, :120].float(), torch.round(k + 0.5).mul(0.25).to(dtype).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_non_finite_channels(device, dtype, layout):
    # NaN propagates into its channel's scale (as torch.amax); a NaN or infinite scale is out of
    # contract, so that channel's output is NaN with mask 0. Other channels are untouched.
    w = make_weight((6, 20), dtype, device, layout)
    w[1, 3] = float("nan")
    w[4, 7] = float("inf")
    y, packed, scale = OP(w, 0, -127, 127)
    assert torch.isnan(scale[1]) and torch.isinf(scale[4])
    assert torch.isnan(w[1].float().abs().amax())  # the torch.amax behaviour followed
    mask = unpack_mask(packed, y)
    for c in (1, 4):
        assert torch.isnan(y[c]).all() and not mask[c].any()
    keep = [0, 2, 3, 5]
    ref_y, ref_mask, ref_scale = weight_abs_max_formula(w[keep], 0, -127, 127)
    assert torch.equal(scale[keep], ref_scale)
    assert torch.equal(y[keep], ref_y) and torch.equal(mask[keep], ref_mask)
    torch.testing.assert_close(scale, weight_abs_max_formula(w, 0, -127, 127)[2], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_eps_floors_the_scale(device):
    w = make_weight((5, 16), torch.float32, device)
    w[2] = 1e-9  # absmax / 127 is below eps
    w[3] = 0.0
    _, _, scale = check(w, 0, -127, 127)
    assert scale[2].item() == EPS and scale[3].item() == EPS
    _, _, scale = check(w, 0, -127, 127, eps=1e-3)
    assert (scale >= torch.tensor(1e-3, dtype=torch.float32)).all() and scale[2].item() == torch.tensor(1e-3).item()


# --- autograd -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_gradient_is_straight_through_with_mask(device, dtype, layout):
    w = make_weight((16, 8, 3, 3), dtype, device, layout)
    w[0, 0, 0, 0] = 30.0  # channel 0: scale 30 / 7.5 = 4 exactly, so 30 / 4 = 7.5 rounds to 8 and clips
    w.requires_grad_()
    y, scale = fakequant.fake_quantize_weight_abs_max(w, axis=0, quant_min=-8, quant_max=7)
    assert not scale.requires_grad and y.requires_grad
    dy = torch.randn(y.shape, device=device).to(dtype)  # contiguous even where y is not
    (dw,) = torch.autograd.grad(y, w, dy)
    _, ref_mask, _ = weight_abs_max_formula(w.detach(), 0, -8, 7)
    assert torch.equal(dw, dy * ref_mask)
    assert not ref_mask[0, 0, 0, 0]  # the full range clips a positive abs-max element at a tie
    if ATEN_HAS_PER_CHANNEL:
        _, _, aten_scale = aten_composite(w.detach(), 0, -8, 7)
        wa = w.detach().clone().requires_grad_()
        ya = torch.fake_quantize_per_channel_affine(wa, aten_scale, torch.zeros(16, dtype=torch.int32, device=device),
                                                    0, -8, 7)
        (dwa,) = torch.autograd.grad(ya, wa, dy)
        assert torch.equal(dw, dwa)


def test_saved_for_backward_is_the_one_bit_mask():
    w = torch.randn(256, 64, requires_grad=True)
    (y, _), saved = saved_for_backward(lambda: fakequant.fake_quantize_weight_abs_max(w))
    assert sum(t.numel() * t.element_size() for t in saved) == w.numel() // 8
    (dw,) = torch.autograd.grad(y, w, torch.ones_like(y))
    assert torch.equal(dw, weight_abs_max_formula(w.detach(), 0, -127, 127)[1].float())


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64_style_ste(device):
    # The STE is linear in the upstream gradient: check grad(sum(y * g)) = g * mask for a few g.
    w = make_weight((8, 13), torch.float32, device).requires_grad_()
    for _ in range(3):
        g = torch.randn(8, 13, device=device)
        y, _, _ = fakequant.fake_quantize_weight_abs_max_with_mask(w, 0, -128, 127)
        (dw,) = torch.autograd.grad((y * g).sum(), w)
        assert torch.equal(dw, g * weight_abs_max_formula(w.detach(), 0, -128, 127)[1])


# --- custom-op machinery ------------------------------------------------------------------


def test_python_api_defaults():
    w = make_weight((12, 7), torch.float32, "cpu")
    y, scale = fakequant.fake_quantize_weight_abs_max(w)
    ref_y, _, ref_scale = weight_abs_max_formula(w, 0, -127, 127)
    assert torch.equal(y, ref_y) and torch.equal(scale, ref_scale)
    y2, packed, scale2 = fakequant.fake_quantize_weight_abs_max_with_mask(w, axis=1, quant_min=-8, quant_max=7,
                                                                          rounding="half_away", eps=1e-5)
    ref_y2, ref_mask2, ref_scale2 = weight_abs_max_formula(w, 1, -8, 7, "half_away", 1e-5)
    assert torch.equal(y2, ref_y2) and torch.equal(scale2, ref_scale2)
    assert torch.equal(unpack_mask(packed, y2), ref_mask2)
    assert fakequant.FLOAT32_EPS == EPS


# --- bad input ----------------------------------------------------------------------------


def _call(w=None, axis=0, qmin=-127, qmax=127, rounding="half_even", eps=EPS):
    w = torch.randn(4, 6) if w is None else w
    return OP(w, axis, qmin, qmax, rounding, eps)


@pytest.mark.parametrize("kwargs,message", [
    (dict(axis=2), r"fake_quant_weight_abs_max: axis must lie in \[-2, 1\] for a 2-d weight, got 2"),
    (dict(axis=-3), r"axis must lie in \[-2, 1\]"),
    (dict(w=torch.tensor(1.0)), r"weight must have at least 1 dimension"),
    (dict(w=torch.randint(0, 3, (4, 6))), r"weight must be float32, float16 or bfloat16"),
    (dict(w=torch.randn(4, 6, dtype=torch.float64)), r"weight must be float32, float16 or bfloat16"),
    (dict(qmin=0, qmax=255), r"symmetric signed range with quant_max >= 1: quant_min == -quant_max .* got \[0, 255\]"),
    (dict(qmin=-128, qmax=126), r"symmetric signed range .* got \[-128, 126\]"),
    (dict(qmin=-126, qmax=127), r"symmetric signed range .* got \[-126, 127\]"),
    (dict(qmin=0, qmax=0), r"symmetric signed range with quant_max >= 1"),
    (dict(qmin=-1, qmax=0), r"symmetric signed range with quant_max >= 1"),
    (dict(qmin=3, qmax=-3), r"quant_min \(3\) must be <= quant_max \(-3\)"),
    (dict(qmin=-70000, qmax=70000), r"quant_min and quant_max must lie in"),
    (dict(qmin=-40000, qmax=40000), r"at most 65536 \(16 bits\)"),
    (dict(rounding="nearest"), r"rounding must be one of 'half_even', 'half_away', got 'nearest'"),
    (dict(rounding="stochastic"), r"rounding must be one of 'half_even', 'half_away', got 'stochastic'"),
    (dict(eps=0.0), r"eps must be finite and >= 1.17549435e-38"),
    (dict(eps=-1.0), r"eps must be finite"),
    (dict(eps=float("nan")), r"eps must be finite"),
    (dict(eps=float("inf")), r"eps must be finite"),
    (dict(eps=1e39), r"eps must be finite"),  # finite double, inf as float32
    (dict(eps=1e-40), r"eps must be finite and >= 1.17549435e-38"),  # subnormal as float32
])
def test_bad_input_raises_naming_the_argument(kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        _call(**kwargs)


def test_bad_input_leaves_the_weight_unchanged():
    w = torch.randn(4, 6)
    before = w.clone()
    with pytest.raises(RuntimeError):
        _call(w, qmin=0, qmax=255)
    assert torch.equal(w, before)


# --- per group (torchao's per-group int) ---------------------------------------------------

PER_GROUP = torch.ops.fakequant.fake_quant_per_group


def make_groups(rows, cols, group_size, dtype, device, specials=True):
    """Random rows of groups of very different magnitudes; with `specials`, the first groups are
    an all-zero group, a group of tiny values (subnormal in float16 / below its smallest normal
    scale), a group of huge values, a group of exact ties (absmax 1.875 = 7.5 * 0.25 with
    elements on odd multiples of 0.125) and groups holding NaN and inf."""
    x = torch.randn(rows, cols, device=device) * torch.rand(rows, cols // group_size, 1, device=device).add(
        0.01).mul(8).repeat_interleave(group_size, dim=-1).view(rows, cols)
    if specials and rows * cols >= 6 * group_size:
        g = x.view(-1, group_size)
        g[0] = 0.0
        g[1] = torch.randn(group_size, device=device) * (1e-6 if dtype == torch.float16 else 1e-39)
        g[2] = torch.randn(group_size, device=device) * (3e4 if dtype == torch.float16 else 1e30)
        ties = torch.arange(group_size, device=device) % 15 - 7  # -7 .. 7
        g[3] = (ties.float() * 0.25 + 0.125 * torch.sign(ties.float())).clamp(-1.875, 1.875)
        g[3][0] = 1.875
        g[4][group_size // 2] = math.nan
        g[5][1] = -math.inf
    return x.to(dtype)


def assert_same_values(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_per_group_equals_torchao_bit_for_bit(device, dtype, bits, group_size):
    qat = pytest.importorskip("torchao.quantization.qat")
    x = make_groups(8, 512, group_size, dtype, device)
    quantizer = qat.fake_quantizer.IntxFakeQuantizer(
        qat.IntxFakeQuantizeConfig(getattr(torch, f"int{bits}"), group_size=group_size))
    expected = quantizer(x)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    y, scale = fakequant.fake_quantize_per_group(x, group_size, qmin, qmax)
    assert_same_values(scale, quantizer.scale)
    assert_same_values(y, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,group_size", [((8, 512), 32), ((3, 5, 96), 3), ((7, 24), 24), ((1, 40), 8),
                                              ((5, 0), 4), ((0, 16), 16), ((11,), 1), ((4, 9000), 9000)])
@pytest.mark.parametrize("qmin,qmax,rounding", [(-8, 7, "half_even"), (-7, 7, "half_away"), (-128, 127, "half_even")])
def test_per_group_matches_the_formula(device, dtype, shape, group_size, qmin, qmax, rounding):
    rows = math.prod(shape[:-1])
    x = make_groups(rows, shape[-1], group_size, dtype, device, specials=False) if rows * shape[-1] else None
    x = x.reshape(shape) if x is not None else torch.empty(shape, dtype=dtype, device=device)
    y, packed, scale = PER_GROUP(x, group_size, qmin, qmax, rounding)
    ref_y, ref_mask, ref_scale = per_group_formula(x, group_size, qmin, qmax, rounding)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(x.numel() / 8)
    assert_same_values(scale, ref_scale)
    assert_same_values(y, ref_y)
    assert torch.equal(unpack_mask(packed, y), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_per_group_takes_any_layout_and_eps(device):
    base = make_groups(64, 96, 32, torch.float32, device, specials=False)
    x = base.t().contiguous().t()  # same values, column-major: made contiguous by the op
    y, _, scale = PER_GROUP(x, 32, -8, 7, "half_even", 0.5)
    ref_y, _, ref_scale = per_group_formula(base, 32, -8, 7, eps=0.5)
    assert y.is_contiguous() and (ref_scale == 0.5).any()
    assert_same_values(scale, ref_scale)
    assert_same_values(y, ref_y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_group_gradient_is_the_clipped_ste(device, dtype):
    x = make_groups(4, 256, 64, dtype, device, specials=False)
    x[0, :64] = x[0, :64].clamp(-1.8, 1.8)
    x[0, 0] = 1.875  # scale 1.875 / 7.5 = 0.25 exactly: 7.5 rounds to 8, out of range
    x.requires_grad_()
    y, scale = fakequant.fake_quantize_per_group(x, 64)
    assert y.requires_grad and not scale.requires_grad
    g = torch.randn_like(y)
    y.backward(g)
    _, mask, _ = per_group_formula(x.detach(), 64, -8, 7)
    assert not mask[0, 0] and mask.any()
    assert torch.equal(x.grad, g * mask)


@pytest.mark.parametrize("kwargs,message", [
    (dict(group_size=0), r"fake_quant_per_group: group_size must be a positive divisor of the last dimension "
                         r"\(96\), got 0"),
    (dict(group_size=7), r"group_size must be a positive divisor of the last dimension \(96\), got 7"),
    (dict(x=torch.tensor(1.0)), r"input must have at least 1 dimension"),
    (dict(x=torch.ones(2, 96, dtype=torch.int32)), r"input must be float32, float16 or bfloat16, got Int"),
    (dict(qmin=0, qmax=15), r"symmetric"),
    (dict(rounding="stochastic"), r"rounding must be one of 'half_even', 'half_away', got 'stochastic'"),
    (dict(eps=-1.0), r"eps must be finite"),
])
def test_per_group_bad_input_raises_naming_the_argument(kwargs, message):
    args = dict(x=torch.randn(2, 96), group_size=32, qmin=-8, qmax=7, rounding="half_even", eps=None) | kwargs
    with pytest.raises(RuntimeError, match=message):
        PER_GROUP(args["x"], args["group_size"], args["qmin"], args["qmax"], args["rounding"], args["eps"])


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_group_cuda_equals_cpu(dtype):
    x = make_groups(16, 4096, 128, dtype, "cuda")
    for out, ref in zip(PER_GROUP(x, 128), PER_GROUP(x.cpu(), 128)):
        assert_same_values(out.cpu(), ref)


# --- CUDA only ------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,layout", [((512, 128), 0, "contiguous"), ((33, 9), 0, "contiguous"),
                                               ((64, 3, 7, 7), 1, "channels_last"), ((8, 20000), 0, "contiguous")])
def test_cuda_equals_cpu(dtype, shape, axis, layout):
    w = make_weight(shape, dtype, "cuda", layout)
    for rounding in ("half_even", "half_away"):
        y, packed, scale = OP(w, axis, -128, 127, rounding)
        yc, packedc, scalec = OP(w.cpu(), axis, -128, 127, rounding)
        assert torch.equal(scale.cpu(), scalec) and torch.equal(y.cpu(), yc) and torch.equal(packed.cpu(), packedc)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_weight_on_another_device_than_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    w = make_weight((16, 9), torch.float32, "cuda:1")
    y, _, scale = OP(w, 0, -127, 127)
    assert y.device == w.device and scale.device == w.device
    assert torch.equal(scale.cpu(), weight_abs_max_formula(w.cpu(), 0, -127, 127)[2])
