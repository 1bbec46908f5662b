"""fakequant.fake_quant_learnable_per_{tensor,channel} (LSQ / LSQ+) against ATen's
_fake_quantize_learnable_per_{tensor,channel}_affine (reached through autograd) and against
the formulas written out below."""

from __future__ import annotations

import pytest
import torch

import fakequant
from conftest import DEVICES, HAS_CUDA, saved_for_backward
from reference import make_input

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (-2, 1), (-32768, 32767), (0, 65535)]
ATEN_HAS_LEARNABLE = hasattr(torch, "_fake_quantize_learnable_per_tensor_affine") and hasattr(
    torch, "_fake_quantize_learnable_per_channel_affine")
needs_aten = pytest.mark.skipif(not ATEN_HAS_LEARNABLE, reason="ATen's learnable fake-quant ops are gone")
# ATen's CPU backward contracts two multiply-adds into FMAs in its AVX2/AVX512 kernels (which
# fakequant follows); its baseline kernels round each step, which moves boundary elements.
ATEN_CPU_FMA = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")

PT = torch.ops.fakequant.fake_quant_learnable_per_tensor
PC = torch.ops.fakequant.fake_quant_learnable_per_channel
PT_BWD = torch.ops.fakequant.fake_quant_learnable_per_tensor_backward
PC_BWD = torch.ops.fakequant.fake_quant_learnable_per_channel_backward


# --- the formulas, written out -------------------------------------------------------------


def _fma32(a, b, c):
    """a * b + c rounded once to float32: the float64 product of two float32 values is exact,
    and for these operands the float64 sum is exact or far from a float32 rounding midpoint."""
    return (a.double() * b.double() + c.double()).float()


def _bshape(x, axis):
    if axis is None:
        return [1] * x.dim() if x.dim() else []
    shape = [1] * x.dim()
    shape[axis] = -1
    return shape


def zero_point_forward(zp, qmin, qmax):
    return torch.round(zp.float()).clamp(qmin, qmax)  # torch.round: nearest, ties to even


def zero_point_backward(zp, qmin, qmax, per_channel):
    if per_channel:
        return zero_point_forward(zp, qmin, qmax)
    return torch.trunc((zp.float() + 0.5).clamp(qmin, qmax))  # + 0.5 in float32, clamp, truncate


def forward_formula(x, scale, zp, axis, qmin, qmax):
    """q = round(x * fp32(1/s)) + round(zp); y = (clamp(q) - zp) * s, once rounded; NaN -> NaN."""
    shape = _bshape(x, axis)
    s = scale.float().reshape(shape)
    z = zero_point_forward(zp, qmin, qmax).reshape(shape).double()
    q = torch.round((x.float() * torch.reciprocal(s)).double()) + z
    y = (q.clamp(qmin, qmax) - z) * s.double()
    y = torch.where(torch.isnan(x), x.double(), y)
    return y.float().to(x.dtype)


def backward_terms(x, dy, scale, zp, axis, qmin, qmax, grad_factor):
    """(grad_input, per-element grad_scale terms, per-element grad_zero_point terms), each step
    one float32 operation as docs/numerics.md lists them."""
    shape = _bshape(x, axis)
    xf, dyf = x.float(), dy.float()
    s = scale.float().reshape(shape)
    inv = torch.reciprocal(s)
    z = zero_point_backward(zp, qmin, qmax, axis is not None).reshape(shape)
    gf = torch.tensor(grad_factor, dtype=torch.float32, device=x.device)
    q = torch.round(_fma32(xf, inv.expand_as(xf), z.expand_as(xf)))
    below, above, nan = q < qmin, q > qmax, torch.isnan(xf)
    inside_range = ~(below | above | nan)
    grad_input = dyf * inside_range.float()
    inside = ((dyf * _fma32(q - z, s.expand_as(xf), -xf)) * inv) * gf
    outside = (dyf * torch.where(below, qmin - z, qmax - z)) * gf
    zp_outside = ((dyf * -1.0) * s) * gf
    grad_scale = torch.where(inside_range, inside, outside)
    grad_zp = torch.where(inside_range, torch.zeros_like(dyf), zp_outside)
    nan_value = torch.full_like(dyf, float("nan"))
    return (grad_input.to(x.dtype), torch.where(nan, nan_value, grad_scale), torch.where(nan, nan_value, grad_zp))


def reduce_terms(terms, axis, like):
    """float64 sums (per channel along `axis`) and the sums of magnitudes (for tolerances)."""
    t = terms.double()
    dims = [d for d in range(t.dim()) if d != axis % t.dim()] if axis is not None else list(range(t.dim()))
    if not dims:
        return t.reshape(like.shape), t.abs().reshape(like.shape)
    return t.sum(dims).reshape(like.shape), t.abs().sum(dims).reshape(like.shape)


def assert_bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    ints = {4: torch.int32, 2: torch.int16}[a.element_size()]
    a_bits = a.contiguous().view(ints)
    b_bits = b.contiguous().view(ints)
    assert torch.equal(a_bits, b_bits), (a - b).abs().max()


def assert_sum_close(actual, ref_sum, ref_abs, rel=1.2e-7, abs_rel=1e-10):
    """Our sums are double accumulations of the exact float32 terms rounded once to float32:
    within half an ulp of the float64 reference plus the double accumulation error
    (numel * 2^-53 * sum |terms|, far below `abs_rel * sum |terms|` for these sizes)."""
    assert actual.dtype == torch.float32 and actual.shape == ref_sum.shape
    err = (actual.double().cpu() - ref_sum.cpu()).abs()
    bound = rel * ref_sum.abs().cpu() + abs_rel * ref_abs.cpu() + 1e-30
    assert bool((err <= bound).all()), (err - bound).max()


# ATen's float32 pairwise summation: error up to about log2(n) * 2^-24 * sum |terms|.
ATEN_SUM_REL = 1e-5


def assert_aten_sum_close(actual, aten, ref_abs):
    err = (actual.double().cpu() - aten.double().cpu()).abs()
    assert bool((err <= ATEN_SUM_REL * ref_abs.cpu() + 1e-30).all()), err.max()


# --- helpers -------------------------------------------------------------------------------


def tensor_qparams(x, qmin, qmax, zero_point=None):
    """A scale that clips some of x and a float zero point (random unless given)."""
    amax = x.float().abs().amax().item() if x.numel() else 1.0
    amax = min(amax, 10.0)  # the +-3e4 outliers stay outliers
    scale = max(amax, 1e-3) * 1.6 / max(qmax - qmin, 1) * float(torch.empty(()).uniform_(0.5, 1.0))
    if zero_point is None:
        zero_point = float(torch.empty(()).uniform_(qmin - 1.5, qmax + 1.5))
    return (torch.tensor([scale], dtype=torch.float32, device=x.device),
            torch.tensor([zero_point], dtype=torch.float32, device=x.device))


def channel_qparams(x, axis, qmin, qmax):
    c = x.shape[axis]
    amax = min(x.float().abs().amax().item() if x.numel() else 1.0, 10.0)
    scale = (torch.rand(c, device=x.device) * 0.5 + 0.5) * (max(amax, 1e-3) * 1.6 / max(qmax - qmin, 1))
    zp = torch.empty(c, device=x.device).uniform_(qmin - 1.5, qmax + 1.5)
    if c > 2:
        zp[0] = float(qmin) + 0.5  # a tie (rounds to even)
        zp[1] = float(max(qmin, min(qmax, -2))) - 0.5
    return scale.float(), zp.float()


def run_ours(x, scale, zp, axis, qmin, qmax, grad_factor, dy):
    xx = x.detach().clone().requires_grad_()
    ss = scale.detach().clone().requires_grad_()
    zz = zp.detach().clone().requires_grad_()
    if axis is None:
        y = fakequant.fake_quantize_learnable_per_tensor(xx, ss, zz, qmin, qmax, grad_factor)
    else:
        y = fakequant.fake_quantize_learnable_per_channel(xx, ss, zz, axis, qmin, qmax, grad_factor)
    return (y,) + torch.autograd.grad(y, (xx, ss, zz), dy)


def run_aten(x, scale, zp, axis, qmin, qmax, grad_factor, dy):
    """ATen through autograd. Its backward takes float32 and bfloat16 inputs; float16 runs on
    the float32 copy (exact) and grad_input is cast back (dy * 0 or dy * 1: exact)."""
    upcast = x.dtype == torch.float16
    xx = (x.float() if upcast else x).detach().clone().requires_grad_()
    ss = scale.detach().clone().requires_grad_()
    zz = zp.detach().clone().requires_grad_()
    if axis is None:
        y = torch._fake_quantize_learnable_per_tensor_affine(xx, ss, zz, qmin, qmax, grad_factor)
    else:
        y = torch._fake_quantize_learnable_per_channel_affine(xx, ss, zz, axis % x.dim(), qmin, qmax, grad_factor)
    dx, ds, dz = torch.autograd.grad(y, (xx, ss, zz), dy.float() if upcast else dy)
    if upcast:
        dx = dx.to(x.dtype)
    return y, dx, ds, dz


def check_against_formula(x, scale, zp, axis, qmin, qmax, grad_factor, dy=None):
    dy = torch.randn(x.shape, device=x.device).to(x.dtype) if dy is None else dy
    y, dx, ds, dz = run_ours(x, scale, zp, axis, qmin, qmax, grad_factor, dy)
    assert y.dtype == x.dtype and dx.dtype == x.dtype and ds.dtype == torch.float32 and dz.dtype == torch.float32
    assert ds.shape == scale.shape and dz.shape == zp.shape
    assert_bits_equal(y, forward_formula(x, scale, zp, axis, qmin, qmax))
    ref_dx, ts, tz = backward_terms(x, dy, scale, zp, axis, qmin, qmax, grad_factor)
    assert_bits_equal(dx, ref_dx)
    ref_s, abs_s = reduce_terms(ts, axis, scale)
    ref_z, abs_z = reduce_terms(tz, axis, zp)
    assert_sum_close(ds, ref_s, abs_s)
    assert_sum_close(dz, ref_z, abs_z)
    return dy, (y, dx, ds, dz), (abs_s, abs_z)


def check_against_aten(x, scale, zp, axis, qmin, qmax, grad_factor, dy, ours, abs_sums, backward=True):
    """Forward bit for bit; on the CPU grad_input bit for bit; the sums within ATen's float32
    summation error. ATen's CUDA backward rounds before adding the zero point, so on the GPU
    only random data (no exact ties) is compared with it (backward=False elsewhere)."""
    y, dx, ds, dz = ours
    ay, adx, ads, adz = run_aten(x, scale, zp, axis, qmin, qmax, grad_factor, dy)
    if x.dtype == torch.float16:
        ay = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, grad_factor) \
            if axis is None else torch._fake_quantize_learnable_per_channel_affine(
                x, scale, zp, axis % x.dim(), qmin, qmax, grad_factor)
    finite = ~torch.isnan(x)
    assert torch.equal(y[finite], ay.to(x.dtype)[finite])  # ATen maps NaN to a number
    if not backward or (x.device.type == "cpu" and not ATEN_CPU_FMA):
        return
    if x.device.type == "cpu":
        assert_bits_equal(dx, adx)
    assert_aten_sum_close(ds, ads, abs_sums[0])
    assert_aten_sum_close(dz, adz, abs_sums[1])


def includes_zero(qmin, qmax):
    return qmin <= 0 <= qmax  # ATen's backward rejects other ranges


# --- per-tensor ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_per_tensor_matches_formula_and_aten(device, dtype, qmin, qmax):
    x = make_input((7, 301), dtype, device)
    scale, zp = tensor_qparams(x, qmin, qmax)
    grad_factor = float(torch.empty(()).uniform_(0.1, 2.0))
    dy, ours, abs_sums = check_against_formula(x, scale, zp, None, qmin, qmax, grad_factor)
    y = ours[0]
    assert (y != x).any()
    if ATEN_HAS_LEARNABLE and includes_zero(qmin, qmax):
        check_against_aten(x, scale, zp, None, qmin, qmax, grad_factor, dy, ours, abs_sums)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("zero_point", [0.0, 2.5, 3.5, -1.2, -2.7, -2.5, 7.0, 126.6, -300.0, 1000.0])
def test_per_tensor_zero_point_values(device, zero_point):
    # Ties, negatives and values beyond the range (clamped by both roundings).
    x = make_input((2049,), torch.float32, device)
    scale, zp = tensor_qparams(x, -128, 127, zero_point)
    dy, ours, abs_sums = check_against_formula(x, scale, zp, None, -128, 127, 0.5)
    if ATEN_HAS_LEARNABLE:
        check_against_aten(x, scale, zp, None, -128, 127, 0.5, dy, ours, abs_sums)


def _around(v, k=600, step=3):
    """Consecutive float32 values around v (every `step`-th bit pattern)."""
    b = torch.tensor([v], dtype=torch.float32).view(torch.int32)
    return (b + torch.arange(-k, k, step, dtype=torch.int32)).view(torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("zero_point", [-19.38, 7.5, 2.5, 1.49, 3.0, -2.5])
def test_boundaries_and_ties_per_tensor(device, zero_point):
    # Values next to the range ends and exact ties: where the backward's rounding of
    # fma(x, 1/s, zp) (zp added before rounding, one rounding) decides, and where it differs
    # from the forward's round(x / s) + zp. Against the formula and ATen bit for bit.
    for s_val in (0.0173, 0.25, 0.1):
        zb = zero_point_backward(torch.tensor([zero_point]), -128, 127, False).item()
        x = torch.cat([_around((127.5 - zb) * s_val), _around((-128.5 - zb) * s_val),
                       (torch.arange(-140.0, 140.0) + 0.5) * s_val, _around(0.5 * s_val)]).to(device)
        scale = torch.tensor([s_val], device=device)
        zp = torch.tensor([zero_point], device=device)
        dy, ours, abs_sums = check_against_formula(x, scale, zp, None, -128, 127, 1.0)
        if ATEN_HAS_LEARNABLE:
            check_against_aten(x, scale, zp, None, -128, 127, 1.0, dy, ours, abs_sums, backward=device == "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_backward_zero_point_rounding_by_hand(device):
    # Every x far above the range: grad_scale = sum(dy) * (quant_max - zb) * grad_factor and
    # grad_zero_point = -sum(dy) * scale * grad_factor, with zb the backward-rounded zero point:
    # per-tensor trunc(clamp(zp + 0.5)), per-channel round-half-even(zp), clamped.
    x = torch.full((16,), 1000.0, device=device)
    dy = torch.ones(16, device=device)
    for zp, zb_tensor, zb_channel in [(2.5, 3.0, 2.0), (-1.2, 0.0, -1.0), (-2.7, -2.0, -3.0), (3.5, 4.0, 4.0),
                                      (200.0, 127.0, 127.0), (-200.0, -128.0, -128.0)]:
        scale = torch.tensor([0.5], device=device)
        zpt = torch.tensor([zp], device=device)
        _, ds, dz = PT_BWD(dy, x, scale, zpt, -128, 127, 0.25)
        assert ds.item() == 16 * (127 - zb_tensor) * 0.25, zp
        assert dz.item() == -16 * 0.5 * 0.25
        _, ds, dz = PC_BWD(dy.reshape(1, 16), x.reshape(1, 16), scale, zpt, 0, -128, 127, 0.25)
        assert ds.item() == 16 * (127 - zb_channel) * 0.25, zp
    # The forward rounds half to even in both ops: 2.5 -> 2, so x = 0.5 * 3 lands on q = 3 + 2.
    y = PT(torch.tensor([1.5], device=device), torch.tensor([0.5], device=device),
           torch.tensor([2.5], device=device), -128, 127)
    assert y.item() == 1.5
    y = PT(torch.tensor([100.0], device=device), torch.tensor([0.5], device=device),
           torch.tensor([2.5], device=device), -128, 127)
    assert y.item() == (127 - 2) * 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (3, 5, 7), (1031,), (0,), (4, 0, 3)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_per_tensor_shapes_and_layouts(device, shape, layout):
    x = make_input(shape, torch.float32, device, layout)
    scale, zp = tensor_qparams(x, -128, 127)
    dy, ours, _ = check_against_formula(x, scale, zp, None, -128, 127, 1.0)
    if x.numel() == 0:  # nothing to sum: zero gradients (ATen returns its inputs here)
        assert ours[2].item() == 0.0 and ours[3].item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_scale_shapes_keep_their_shape(device):
    x = make_input((5, 6), torch.float32, device)
    for shape in [(), (1,), (1, 1)]:
        scale = torch.full(shape, 0.05, device=device)
        zp = torch.full(shape, 1.25, device=device)
        dy, (y, dx, ds, dz), _ = check_against_formula(x, scale, zp, None, -8, 7, 1.0)
        assert ds.shape == shape and dz.shape == shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_inputs(device, dtype):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -0.5, 300.0], dtype=dtype, device=device)
    scale = torch.tensor([0.5], device=device, requires_grad=True)
    zp = torch.tensor([1.0], device=device, requires_grad=True)
    xx = x.clone().requires_grad_()
    y = fakequant.fake_quantize_learnable_per_tensor(xx, scale, zp, -8, 7)
    assert torch.isnan(y[0])                                            # NaN -> NaN
    assert y[1].item() == (7 - 1) * 0.5 and y[2].item() == (-8 - 1) * 0.5  # +-inf saturate
    assert y[3].item() == 1.0 and y[4].item() == -0.5
    dy = torch.ones_like(y)
    dx, ds, dz = torch.autograd.grad(y, (xx, scale, zp), dy)
    assert dx.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert torch.isnan(ds).all() and torch.isnan(dz).all()              # NaN reaches the qparams
    # Without the NaN: +inf and 300 saturate above, -inf below.
    dx, ds, dz = PT_BWD(dy[1:], x[1:], scale.detach(), zp.detach(), -8, 7, 1.0)
    zb = 1.0
    expected_s = (7 - zb) * 2 + (-8 - zb) + ((1.0 - 1.0) + (-0.5 + 0.5)) / 0.5
    assert ds.item() == expected_s and dz.item() == -3 * 0.5


# --- per-channel ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "strided"])
def test_per_channel_matches_formula_and_aten(device, dtype, axis, layout):
    x = make_input((3, 6, 5, 7), dtype, device, layout)
    scale, zp = channel_qparams(x, axis, -128, 127)
    grad_factor = float(torch.empty(()).uniform_(0.1, 2.0))
    dy, ours, abs_sums = check_against_formula(x, scale, zp, axis, -128, 127, grad_factor)
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
        assert ours[1].is_contiguous(memory_format=torch.channels_last)
    if ATEN_HAS_LEARNABLE:
        check_against_aten(x, scale, zp, axis, -128, 127, grad_factor, dy, ours, abs_sums)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_per_channel_ranges(device, qmin, qmax):
    x = make_input((4, 33, 9), torch.float32, device)
    scale, zp = channel_qparams(x, 1, qmin, qmax)
    dy, ours, abs_sums = check_against_formula(x, scale, zp, 1, qmin, qmax, 0.7)
    if ATEN_HAS_LEARNABLE and includes_zero(qmin, qmax):
        check_against_aten(x, scale, zp, 1, qmin, qmax, 0.7, dy, ours, abs_sums)


@pytest.mark.parametrize("device", DEVICES)
def test_boundaries_and_ties_per_channel(device):
    # One element per channel ([C, 1] along axis 0): every element's terms are visible in
    # grad_scale / grad_zero_point, so they must equal ATen's per-element values exactly.
    xs, ss, zs = [], [], []
    for s_val, z_val in [(0.0173, -19.38), (0.1, 7.5), (0.013, -1.2), (0.3, 2.5), (0.25, 3.0), (0.25, -2.5)]:
        zr = float(torch.round(torch.tensor(z_val)).clamp(-128, 127))
        v = torch.cat([_around((127.5 - zr) * s_val, 300, 7), _around((-128.5 - zr) * s_val, 300, 7),
                       (torch.arange(-140.0, 140.0) + 0.5) * s_val, torch.randn(200) * 3])
        xs.append(v), ss.append(torch.full_like(v, s_val)), zs.append(torch.full_like(v, z_val))
    x = torch.cat(xs).reshape(-1, 1).to(device)
    scale, zp = torch.cat(ss).to(device), torch.cat(zs).to(device)
    dy = torch.randn(x.shape, device=device)
    gx, gs, gz = PC_BWD(dy, x, scale, zp, 0, -128, 127, 1.3)
    ref_dx, ts, tz = backward_terms(x, dy, scale, zp, 0, -128, 127, 1.3)
    assert_bits_equal(gx, ref_dx)
    assert_bits_equal(gs, ts.reshape(-1))
    assert_bits_equal(gz, tz.reshape(-1))
    if ATEN_HAS_LEARNABLE and device == "cpu" and ATEN_CPU_FMA:  # ATen's CUDA rounds differently
        ax, as_, az = torch.ops.aten._fake_quantize_learnable_per_channel_affine_backward(
            dy, x, scale, zp, 0, -128, 127, 1.3)
        assert_bits_equal(gx, ax)
        assert_bits_equal(gs, as_)
        assert_bits_equal(gz, az)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,axis", [((1,), 0), ((7,), 0), ((5, 1), 1), ((0, 4), 1), ((4, 0), 0), ((2, 3), 0),
                                        ((9, 8, 1, 3), 2), ((1, 64), 1)])
def test_per_channel_odd_and_empty_shapes(device, shape, axis):
    x = make_input(shape, torch.float32, device)
    scale, zp = channel_qparams(x, axis, -128, 127)
    _, ours, _ = check_against_formula(x, scale, zp, axis, -128, 127, 1.0)
    if x.numel() == 0:
        assert (ours[2] == 0).all() and (ours[3] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["per_tensor", "weight_axis0", "weight_axis1", "channels_last_axis1", "last_axis"])
def test_large_inputs_span_many_chunks(device, case):
    # Sizes that split into many chunks / blocks, so partial sums are combined.
    if case == "per_tensor":
        x, axis = make_input(((1 << 18) + 3,), torch.float32, device), None
    elif case == "weight_axis0":
        x, axis = make_input((64, 4099), torch.float32, device), 0
    elif case == "weight_axis1":
        x, axis = make_input((257, 1030), torch.float32, device), 1
    elif case == "channels_last_axis1":
        x, axis = make_input((8, 64, 17, 17), torch.float32, device, "channels_last"), 1
    else:
        x, axis = make_input((3000, 100), torch.float32, device), -1
    if axis is None:
        scale, zp = tensor_qparams(x, -128, 127)
    else:
        scale, zp = channel_qparams(x, axis, -128, 127)
    dy, ours, abs_sums = check_against_formula(x, scale, zp, axis, -128, 127, 0.01)
    if ATEN_HAS_LEARNABLE:
        check_against_aten(x, scale, zp, axis, -128, 127, 0.01, dy, ours, abs_sums)


def test_cpu_result_does_not_depend_on_the_thread_count():
    x = make_input((300, 1111), torch.float32, "cpu")
    dy = torch.randn(x.shape)
    scale, zp = tensor_qparams(x, -128, 127)
    cscale, czp = channel_qparams(x, 0, -128, 127)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((PT_BWD(dy, x, scale, zp, -128, 127, 1.0), PC_BWD(dy, x, cscale, czp, 0, -128, 127, 1.0)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        for a, b in zip(r[0] + r[1], results[0][0] + results[0][1]):
            assert_bits_equal(a, b)


# --- autograd wiring --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False),
                                   (False, False, True), (True, True, False), (False, True, True)])
def test_gradients_only_where_needed(device, per_channel, needs):
    x = make_input((4, 6, 5), torch.float32, device)
    if per_channel:
        scale, zp = channel_qparams(x, 1, -128, 127)
    else:
        scale, zp = tensor_qparams(x, -128, 127)
    dy = torch.randn(x.shape, device=device)
    full = PC_BWD(dy, x, scale, zp, 1, -128, 127, 0.3) if per_channel else PT_BWD(dy, x, scale, zp, -128, 127, 0.3)
    leaves = [t.detach().clone().requires_grad_(n) for t, n in zip((x, scale, zp), needs)]
    if per_channel:
        y = fakequant.fake_quantize_learnable_per_channel(*leaves, 1, -128, 127, 0.3)
    else:
        y = fakequant.fake_quantize_learnable_per_tensor(*leaves, -128, 127, 0.3)
    wanted = [t for t, n in zip(leaves, needs) if n]
    grads = iter(torch.autograd.grad(y, wanted, dy))
    for t, n, ref in zip(leaves, needs, full):
        if n:
            assert_bits_equal(next(grads), ref)
    # The op itself: what output_mask leaves out comes back empty.
    part = PC_BWD(dy, x, scale, zp, 1, -128, 127, 0.3, list(needs)) if per_channel else \
        PT_BWD(dy, x, scale, zp, -128, 127, 0.3, list(needs))
    for n, got, ref in zip(needs, part, full):
        if n:
            assert_bits_equal(got, ref)
        else:
            assert got.numel() == 0


def test_saves_input_and_qparams_by_reference():
    x = torch.randn(1000, 64, requires_grad=True)
    scale, zp = tensor_qparams(x, -128, 127)
    scale.requires_grad_(), zp.requires_grad_()
    y, saved = saved_for_backward(lambda: fakequant.fake_quantize_learnable_per_tensor(x, scale, zp, -128, 127))
    # Exactly the three inputs, the same storage: nothing full-size is created for backward.
    assert len(saved) == 3
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), scale.data_ptr(), zp.data_ptr()}
    dy = torch.randn_like(y)
    dx, _, _ = torch.autograd.grad(y, (x, scale, zp), dy)
    assert_bits_equal(dx, backward_terms(x.detach(), dy, scale.detach(), zp.detach(), None, -128, 127, 1.0)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_with_differently_strided_grad(device):
    x = make_input((2, 4, 5, 6), torch.float32, device, "channels_last")
    scale, zp = channel_qparams(x, 1, -8, 7)
    dy = torch.randn(x.shape, device=device)  # contiguous, x is channels_last
    check_against_formula(x, scale, zp, 1, -8, 7, 1.0, dy)


def test_python_api_is_documented_and_exported():
    for name in ("fake_quantize_learnable_per_tensor", "fake_quantize_learnable_per_channel"):
        assert name in fakequant.__all__
        doc = getattr(fakequant, name).__doc__
        assert doc and "scale" in doc and "zero_point" in doc


# --- custom-op machinery ----------------------------------------------------------------------


# --- bad input -------------------------------------------------------------------------------


def _pt_args(device="cpu", **over):
    a = dict(input=torch.randn(10, device=device), scale=torch.tensor([0.1], device=device),
             zero_point=torch.tensor([0.4], device=device), quant_min=-128, quant_max=127, grad_factor=1.0)
    a.update(over)
    return a


def _pc_args(device="cpu", **over):
    a = dict(input=torch.randn(2, 3, 4, device=device), scale=torch.full((3,), 0.1, device=device),
             zero_point=torch.zeros(3, device=device), axis=1, quant_min=-128, quant_max=127, grad_factor=1.0)
    a.update(over)
    return a


def _pt_calls(a):
    yield lambda: PT(a["input"], a["scale"], a["zero_point"], a["quant_min"], a["quant_max"], a["grad_factor"])
    yield lambda: PT_BWD(torch.ones_like(a["input"]), a["input"], a["scale"], a["zero_point"], a["quant_min"],
                         a["quant_max"], a["grad_factor"])


def _pc_calls(a):
    yield lambda: PC(a["input"], a["scale"], a["zero_point"], a["axis"], a["quant_min"], a["quant_max"],
                     a["grad_factor"])
    yield lambda: PC_BWD(torch.ones_like(a["input"]), a["input"], a["scale"], a["zero_point"], a["axis"],
                         a["quant_min"], a["quant_max"], a["grad_factor"])


BAD_PER_TENSOR = [
    (dict(scale=torch.tensor([0.1], dtype=torch.float64)), r"scale must be a float32 tensor \(learnable qparams\)"),
    (dict(zero_point=torch.tensor([0], dtype=torch.int32)), r"zero_point must be a float32 tensor"),
    (dict(scale=torch.tensor([0.1, 0.2])), r"scale must have exactly 1 element \(per-tensor qparams\), got 2"),
    (dict(zero_point=torch.zeros(0)), r"zero_point must have exactly 1 element"),
    (dict(quant_min=5, quant_max=4), r"quant_min \(5\) must be <= quant_max \(4\)"),
    (dict(quant_min=-32768, quant_max=32768), r"at most 65536 \(16 bits\)"),
    (dict(grad_factor=float("inf")), r"grad_factor must be finite \(as float32\), got inf"),
    (dict(grad_factor=float("nan")), r"grad_factor must be finite"),
    (dict(grad_factor=1e300), r"grad_factor must be finite \(as float32\)"),
    (dict(input=torch.randint(0, 5, (10,))), r"input must be float32, float16 or bfloat16"),
    (dict(input=torch.randn(10, dtype=torch.float64)), r"input must be float32, float16 or bfloat16"),
    (dict(scale=torch.tensor([0.1], device="meta")), r"scale must be on the same device as input"),
    (dict(scale=torch.tensor([0.0])), r"scale must be finite and >= 1.17549435e-38"),
    (dict(scale=torch.tensor([-0.1])), r"scale must be finite and >= 1.17549435e-38"),
    (dict(scale=torch.tensor([float("inf")])), r"scale must be finite"),
    (dict(scale=torch.tensor([float("nan")])), r"scale must be finite"),
    (dict(zero_point=torch.tensor([float("nan")])), r"zero_point must be finite \(it is rounded and clamped"),
    (dict(zero_point=torch.tensor([float("-inf")])), r"zero_point must be finite"),
]


BAD_PER_CHANNEL = [
    (dict(axis=3), r"axis must lie in \[-3, 2\] for a 3-d input, got 3"),
    (dict(axis=-4), r"axis must lie in \[-3, 2\]"),
    (dict(input=torch.tensor(1.0), scale=torch.ones(1), zero_point=torch.zeros(1), axis=0), r"at least 1 dimension"),
    (dict(scale=torch.full((4,), 0.1)), r"scale must be a 1-D tensor of input.size\(1\) = 3 elements, got shape \[4\]"),
    (dict(zero_point=torch.zeros(1, 3)), r"zero_point must be a 1-D tensor of input.size\(1\) = 3 elements"),
    (dict(zero_point=torch.zeros(3, dtype=torch.int32)), r"zero_point must be a float32 tensor"),
    (dict(scale=torch.tensor([0.1, 0.0, 0.1])), r"channel 1: scale must be finite and >= 1.17549435e-38"),
    (dict(scale=torch.tensor([0.1, 0.1, float("nan")])), r"channel 2: scale must be finite"),
    (dict(zero_point=torch.tensor([0.0, float("inf"), 0.0])), r"channel 1: zero_point must be finite"),
    (dict(grad_factor=float("-inf")), r"grad_factor must be finite"),
    (dict(quant_min=3, quant_max=2), r"quant_min \(3\) must be <= quant_max \(2\)"),
    (dict(zero_point=torch.zeros(3, device="meta")), r"zero_point must be on the same device as input"),
]


BAD_INPUTS = ([("per_tensor", over, message) for over, message in BAD_PER_TENSOR]
              + [("per_channel", over, message) for over, message in BAD_PER_CHANNEL])


@pytest.mark.parametrize("kind,over,message", BAD_INPUTS)
def test_bad_input_raises_naming_the_op_and_argument(kind, over, message):
    """Forward and backward op alike name themselves and the argument."""
    calls = _pt_calls(_pt_args(**over)) if kind == "per_tensor" else _pc_calls(_pc_args(**over))
    for call in calls:
        with pytest.raises(RuntimeError, match=rf"fakequant\.fake_quant_learnable_{kind}(_backward)?: .*" + message):
            call()


def test_bad_backward_grad_output():
    x, s, z = torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([0.0])
    with pytest.raises(RuntimeError, match=r"grad_output must have input's dtype \(Float\), got BFloat16"):
        PT_BWD(torch.ones(4, 5, dtype=torch.bfloat16), x, s, z, -128, 127)
    with pytest.raises(RuntimeError, match=r"grad_output must have input's shape \[4, 5\], got \[5, 4\]"):
        PT_BWD(torch.ones(5, 4), x, s, z, -128, 127)
    with pytest.raises(RuntimeError, match=r"grad_output must be on the same device as input"):
        PT_BWD(torch.ones(4, 5, device="meta"), x, s, z, -128, 127)


def test_rejected_call_leaves_inputs_alone():
    a = _pc_args(scale=torch.tensor([0.1, -1.0, 0.1]))
    before = [a[k].clone() for k in ("input", "scale", "zero_point")]
    for call in _pc_calls(a):
        with pytest.raises(RuntimeError):
            call()
    for b, k in zip(before, ("input", "scale", "zero_point")):
        assert torch.equal(b, a[k])


# --- CUDA only --------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [("per_tensor", (1 << 20) + 3, None, "contiguous"),
                                  ("weight", (256, 4608), 0, "contiguous"),
                                  ("activations", (16, 64, 28, 28), 1, "channels_last"),
                                  ("last_axis", (4096, 96), -1, "contiguous"),
                                  ("short_runs", (512, 40, 7), 1, "contiguous")])
def test_cuda_matches_cpu_and_is_deterministic(dtype, case):
    _, shape, axis, layout = case
    x = make_input(shape, dtype, "cuda", layout)
    if axis is None:
        scale, zp = tensor_qparams(x, -128, 127)
    else:
        scale, zp = channel_qparams(x, axis, -128, 127)
    dy = torch.randn(x.shape, device="cuda").to(dtype)
    args = (scale, zp, -128, 127, 0.2) if axis is None else (scale, zp, axis, -128, 127, 0.2)
    fwd, bwd = (PT, PT_BWD) if axis is None else (PC, PC_BWD)
    y = fwd(x, *args)
    grads = bwd(dy, x, *args)
    cpu_args = tuple(a.cpu() if torch.is_tensor(a) else a for a in args)
    y_cpu = fwd(x.cpu(), *cpu_args)
    grads_cpu = bwd(dy.cpu(), x.cpu(), *cpu_args)
    assert_bits_equal(y.cpu(), y_cpu)
    assert_bits_equal(grads[0].cpu(), grads_cpu[0])
    _, ts, tz = backward_terms(x.cpu(), dy.cpu(), scale.cpu(), zp.cpu(), None if axis is None else axis % x.dim(),
                               -128, 127, 0.2)
    ref_s, abs_s = reduce_terms(ts, None if axis is None else axis % x.dim(), scale.cpu())
    ref_z, abs_z = reduce_terms(tz, None if axis is None else axis % x.dim(), zp.cpu())
    assert_sum_close(grads[1], ref_s, abs_s)
    assert_sum_close(grads[2], ref_z, abs_z)
    again = bwd(dy, x, *args)
    for a, b in zip(grads, again):
        assert_bits_equal(a, b)  # fixed summation order


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_bad_qparams_poison_without_sync():
    x = torch.randn(4, 3, 16, device="cuda")
    scale = torch.tensor([0.1, -1.0, 0.1], device="cuda")
    zp = torch.tensor([0.0, 0.0, float("nan")], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = PC(x, scale, zp, 1, -128, 127)
        gx, gs, gz = PC_BWD(torch.ones_like(x), x, scale, zp, 1, -128, 127)
        yt = PT(x, scale[1:2], zp[:1], -128, 127)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not torch.isnan(y[:, 0]).any() and torch.isnan(y[:, 1:]).all()
    assert not torch.isnan(gx[:, 0]).any() and torch.isnan(gx[:, 1:]).all()
    assert not torch.isnan(gs[0]) and torch.isnan(gs[1:]).all() and torch.isnan(gz[1:]).all()
    assert torch.isnan(yt).all()

