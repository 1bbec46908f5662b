"""fakequant.fake_quant_block (block-scaled formats) bit for bit against torchao 0.18's
references: IntxFakeQuantizer (per token; per group asymmetric), Float8FakeQuantizer (per row,
per tensor) and its float8 primitives (2-D blocks), the MX reference (to_mx + to_dtype) for
every element type and scale mode, NVFP4 (nvfp4_quantize + its dequantisation) with and
without a tensor scale; the ModelOpt profiles against ModelOpt's formulas written out below.
Outputs are compared bit for bit (signed zeros count, NaN positions must match), scales and
zero points exactly. Then the gradient (the clipped STE), stochastic rounding, bad input and
the torchao quirks the op reproduces (pinned, each noted in docs/block-formats.md)."""

from __future__ import annotations

import math

import pytest
import torch

import fakequant
from conftest import DEVICES, saved_for_backward
from reference import MINIFLOATS, block_formula, unpack_mask

OP = torch.ops.fakequant.fake_quant_block
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

qat = pytest.importorskip("torchao.quantization.qat")
fake_quantizer = pytest.importorskip("torchao.quantization.qat.fake_quantizer")
granularity = pytest.importorskip("torchao.quantization.granularity")
primitives = pytest.importorskip("torchao.quantization.quant_primitives")
quant_utils = pytest.importorskip("torchao.quantization.utils")
mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
mx_config = pytest.importorskip("torchao.prototype.mx_formats.config")
mx_constants = pytest.importorskip("torchao.prototype.mx_formats.constants")
mx_kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
nvfp4_tensor = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")

MX_ELEMENTS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "e3m2": mx_constants.DTYPE_FP6_E3M2,
               "e2m3": mx_constants.DTYPE_FP6_E2M3, "e2m1": torch.float4_e2m1fn_x2}
FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


# --- comparison and data ------------------------------------------------------------------


def assert_bits(got, expected, what="output"):
    """Equal bit for bit (+0 differs from -0), NaN where the other is NaN (any payload)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape, (what, got.shape, expected.shape)
    if not got.is_floating_point():
        assert torch.equal(got, expected), what
        return
    g, e = got.detach().cpu(), expected.detach().cpu()
    nan = torch.isnan(g)
    assert torch.equal(nan, torch.isnan(e)), f"{what}: NaN positions differ"
    ints = {F32: torch.int32, F16: torch.int16, BF16: torch.int16}[g.dtype]
    gi, ei = g.contiguous().view(ints), e.contiguous().view(ints)
    bad = (gi != ei) & ~nan
    assert not bad.any(), f"{what}: {int(bad.sum())} differ, first at {bad.nonzero()[0].tolist()}: " \
                          f"{g[bad][0].item()!r} vs {e[bad][0].item()!r}"


def minifloat_values(fmt):
    """Every non-negative finite value of the minifloat, ascending."""
    mbits, emin, vmax = MINIFLOATS[fmt]
    vals = {m * 2.0 ** (emin - mbits) for m in range(2 ** mbits)}
    e = emin
    while True:
        new = [(1 + m / 2 ** mbits) * 2.0 ** e for m in range(2 ** mbits)]
        vals.update(v for v in new if v <= vmax)
        if new[-1] >= vmax:
            break
        e += 1
    return sorted(vals)


def tie_values(fmt, n):
    """n values: the format's largest value (so a block's abs-max is the top of the grid), then
    the midpoints between neighbouring grid values (exact ties), alternating signs."""
    v = minifloat_values(fmt)
    mids = [(a + b) / 2 for a, b in zip(v, v[1:])]
    out = [v[-1]] + [m * (-1) ** i for i, m in enumerate(mids)]
    return torch.tensor((out * (n // len(out) + 1))[:n])


def make_blocks(rows, cols, block, dtype, fmt="e2m1", specials=True, scale=1.0):
    """Random blocks of `block` elements along the last dim, of magnitudes 2^-20 .. 2^20
    (2^-10 .. 2^10 for float16, whose range ends at 65504); with
    `specials`, the first blocks are: all zeros, subnormals (of dtype), huge values, exact ties
    of `fmt`'s grid times `scale` (a power of two), one NaN, one +inf, one -0.0 among zeros and
    small values."""
    nb = cols // block
    span = 10 if dtype == F16 else 20
    mags = torch.pow(2.0, torch.randint(-span, span + 1, (rows, nb, 1)).float())
    x = (torch.randn(rows, nb, block) * mags).view(-1, block)
    if specials and x.shape[0] >= 8:
        x[0] = 0.0
        x[1] = torch.randn(block) * (1e-6 if dtype == F16 else 1e-40)
        x[2] = torch.randn(block) * (2e3 if dtype == F16 else 1e35)
        x[3] = tie_values(fmt, block) * scale
        x[4, block // 3] = math.nan
        x[5, 1] = math.inf
        x[6] = torch.randn(block) * 1e-3
        x[6, 0] = -0.0
        x[7, :block // 2] = 0.0
    return x.view(rows, cols).to(dtype)


def int_tie_row(cols, qmin, qmax, step=0.125):
    """A row whose asymmetric scale is exactly `step` (min qmin * step, max qmax * step, so the
    zero point is 0) and whose other elements sit halfway between levels: exact ties."""
    k = torch.arange(cols - 2) % (qmax - qmin) + qmin
    return torch.cat([torch.tensor([qmin * step, qmax * step]), (k + 0.5) * step])


# --- torchao: integer rules ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("shape", [(16, 64), (3, 5, 40)])
def test_per_token_equals_torchao(dtype, shape):
    rows, cols = math.prod(shape[:-1]), shape[-1]
    x = make_blocks(rows, cols, cols, dtype, specials=False)
    x[0] = int_tie_row(cols, -128, 127).to(dtype)
    x[1, :] = 0.0
    x[2, 3] = math.nan
    x[3] = x[3].abs() * 1e-30 if dtype != F16 else x[3]  # one-sided, tiny
    x[4, 5] = -math.inf
    x = x.view(shape)
    quantizer = fake_quantizer.IntxFakeQuantizer(qat.IntxFakeQuantizeConfig(torch.int8, "per_token",
                                                                             is_symmetric=False))
    expected = quantizer(x)
    y, scale, zero_point = fakequant.fake_quantize_per_token(x)
    assert_bits(scale, quantizer.scale, "scale")
    assert_bits(zero_point, quantizer.zero_point, "zero_point")
    assert_bits(y, expected)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("bits,group_size", [(4, 32), (2, 64), (8, 16)])
def test_per_group_affine_equals_torchao(dtype, bits, group_size):
    x = make_blocks(8, 256, group_size, dtype, specials=True)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    x.view(-1, group_size)[3] = int_tie_row(group_size, qmin, qmax).to(dtype)
    quantizer = fake_quantizer.IntxFakeQuantizer(
        qat.IntxFakeQuantizeConfig(getattr(torch, f"int{bits}"), group_size=group_size, is_symmetric=False))
    expected = quantizer(x)
    y, scale, zero_point = fakequant.fake_quantize_per_group_affine(x, group_size, qmin, qmax)
    assert_bits(scale, quantizer.scale, "scale")
    assert_bits(zero_point, quantizer.zero_point, "zero_point")
    assert_bits(y, expected)


def test_per_group_affine_grid_is_torchao_quirky_grid():
    # torchao's float-domain zero point min + scale * 2^(b-1), truncated to an integer and
    # then used as an integer-domain one, does not put the group's [min, max] on the grid:
    # [0, 15] gives scale 1, zero point 8, and q = clamp(x + 8, -8, 7) = 7 for every element,
    # which dequantises to (7 - 8) * 1 = -1.
    x = torch.arange(16.0).view(1, 16)
    y, scale, zero_point = fakequant.fake_quantize_per_group_affine(x, 16)
    quantizer = fake_quantizer.IntxFakeQuantizer(qat.IntxFakeQuantizeConfig(torch.int4, group_size=16,
                                                                             is_symmetric=False))
    assert_bits(y, quantizer(x))
    assert scale.item() == 1.0 and zero_point.item() == 8
    assert (y == -1).all()


# --- torchao: FP8 -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("gran", ["row", "tensor"])
@pytest.mark.parametrize("bounds", [None, (1e-3, 300.0)])
def test_fp8_equals_torchao(dtype, fmt, gran, bounds):
    x = make_blocks(8, 96, 96, dtype, fmt=fmt, scale=2.0 ** -3)
    x[0] = x[6]  # no zero row: torchao's 0 / 0 (pinned separately)
    if gran == "tensor":
        x[4, 32] = 1.0  # no NaN: it would take the whole tensor
        x[2] = 1.0
    g = granularity.PerRow() if gran == "row" else granularity.PerTensor()
    lb, ub = bounds if bounds else (None, None)
    config = qat.Float8FakeQuantizeConfig(FP8[fmt], g, hp_value_lb=lb, hp_value_ub=ub)
    expected = fake_quantizer.Float8FakeQuantizer(config)(x)
    block = quant_utils.get_block_size(x.shape, g)
    ref_scale = primitives._choose_scale_float8(x, block, FP8[fmt], hp_value_lb=lb, hp_value_ub=ub)
    y, scale = fakequant.fake_quantize_fp8(x, fmt, gran, amax_bounds=bounds)
    assert_bits(scale, ref_scale, "scale")
    assert_bits(y, expected)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_fp8_blocks_equal_torchao_primitives(dtype):
    # 2-D tiles through torchao's own float8 primitives, which take any block shape.
    x = make_blocks(64, 96, 32, dtype, fmt="e4m3")
    x.view(-1, 32)[0] = 1.0  # no all-zero tile
    scale_ref = primitives._choose_scale_float8(x, [32, 32], torch.float8_e4m3fn)
    q = primitives._quantize_affine_float8(x, scale_ref, torch.float8_e4m3fn)
    expected = primitives._dequantize_affine_float8(q, scale_ref, dtype)
    y, scale = fakequant.fake_quantize_fp8(x, "e4m3", "block", block_size=32)
    assert_bits(scale, scale_ref, "scale")
    assert_bits(y, expected)


def test_fp8_zero_row_is_nan_as_torchao():
    # Quirk kept: an all-zero row's scale is 0 and 0 / 0 makes the row NaN; hp_value_lb > 0
    # avoids it.
    x = torch.randn(3, 16)
    x[1] = 0.0
    expected = fake_quantizer.Float8FakeQuantizer(qat.Float8FakeQuantizeConfig())(x)
    y, scale = fakequant.fake_quantize_fp8(x)
    assert torch.isnan(expected[1]).all() and torch.isnan(y[1]).all() and scale[1].item() == 0.0
    assert_bits(y, expected)
    y, _ = fakequant.fake_quantize_fp8(x, amax_bounds=(1e-12, None))
    assert (y[1] == 0).all()


# --- torchao: MX --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
def test_mx_equals_torchao(dtype, fmt, mode):
    x = make_blocks(8, 256, 32, dtype, fmt=fmt, scale=2.0 ** 5)
    x.view(-1, 32)[9, 4] = -math.inf
    scale_mode = getattr(mx_config.ScaleCalculationMode, mode.upper())
    e8m0, data = mx_tensor.to_mx(x, MX_ELEMENTS[fmt], 32, scale_mode)
    expected = mx_tensor.to_dtype(data, e8m0, MX_ELEMENTS[fmt], 32, dtype)
    y, scale = fakequant.fake_quantize_mx(x, fmt, 32, mode)
    assert_bits(scale, mx_tensor.get_fp_scale(e8m0), "scale")
    assert_bits(y, expected)


def test_mx_quirks():
    # A block holding NaN gets E8M0 255 (NaN) and dequantises to NaN throughout, whatever its
    # elements' codes; torchao's FP4 cast gives NaN the code of +-1.5 (no NaN in E2M1).
    x = torch.randn(2, 32)
    x[0, 5] = math.nan
    y, scale = fakequant.fake_quantize_mx(x, "e2m1")
    assert torch.isnan(y[0]).all() and torch.isnan(scale[0]).all() and not torch.isnan(y[1]).any()
    codes = mx_kernels.f32_to_f4_unpacked(torch.tensor([math.nan, -math.nan]))
    assert codes.tolist() == [3, 11]  # +1.5, -1.5
    # An all-zero block: E8M0 0 (2^-127, reported) but the division uses 2^-126, torchao's floor.
    y, scale = fakequant.fake_quantize_mx(torch.zeros(1, 32), "e4m3")
    assert scale.item() == 2.0 ** -127 and (y == 0).all()
    # RCEIL gives a block whose abs-max / max is below 2^-127 the exponent 0 and multiplies its
    # elements by 1.0, not 2^127 (torchao's reciprocal for exponent 0): they all round to zero.
    x = torch.full((1, 32), 1e-38)
    e8m0, data = mx_tensor.to_mx(x, torch.float8_e4m3fn, 32, mx_config.ScaleCalculationMode.RCEIL)
    y, scale = fakequant.fake_quantize_mx(x, "e4m3", scale_mode="rceil")
    assert e8m0.view(torch.uint8).item() == 0 and (y == 0).all()
    assert_bits(y, mx_tensor.to_dtype(data, e8m0, torch.float8_e4m3fn, 32, F32))


def test_mx_rceil_log2_just_above_powers_of_two():
    # RCEIL's exponent is ceil(log2(abs-max / max)) with a float32 log2: just above 2^k the true
    # log2 (k + 1.7e-7) rounds to k once k >= 2, so the exponent is k and the largest element,
    # scaled by 2^-k, exceeds the format's max and saturates. Both torchao and the op do this.
    fmt = "e4m3"
    ks = torch.arange(-100, 100)
    amax = torch.pow(2.0, ks.double()).float() * 448.0
    amax = amax.view(torch.int32).add(1).view(torch.float32)  # one ulp above 448 * 2^k
    x = (torch.rand(len(ks), 32) * 2 - 1) * (amax / 2).unsqueeze(1)
    x[:, 0] = amax
    e8m0, data = mx_tensor.to_mx(x, torch.float8_e4m3fn, 32, mx_config.ScaleCalculationMode.RCEIL)
    y, scale = fakequant.fake_quantize_mx(x, fmt, scale_mode="rceil")
    assert_bits(scale, mx_tensor.get_fp_scale(e8m0), "scale")
    assert_bits(y, mx_tensor.to_dtype(data, e8m0, torch.float8_e4m3fn, 32, F32))
    # log2 = k + 2^-23 / ln 2 keeps its fraction while half a float32 ulp of k is below it:
    # |k| < 4, and -4 (ulp 2^-21 on [-4, -2)).
    rounded_down = scale.squeeze(1) * 448.0 < amax
    assert torch.equal(rounded_down, (ks >= 4) | (ks <= -5))


# --- torchao: NVFP4 -----------------------------------------------------------------------


def nvfp4_torchao(x, per_tensor):
    """nvfp4_quantize and NVFP4Tensor.dequantize's arithmetic: e2m1 value * (tensor scale *
    e4m3 scale), to the input's dtype."""
    ts = nvfp4_tensor.per_tensor_amax_to_scale(torch.max(torch.abs(x))) if per_tensor else None
    e4m3, packed = nvfp4_tensor.nvfp4_quantize(x, 16, ts)
    values = mx_kernels.f4_unpacked_to_f32(mx_kernels.unpack_uint4(packed))
    block = e4m3.to(F32) if ts is None else ts * e4m3.to(F32)
    y = (values.view(x.shape[0], -1, 16) * block.view(x.shape[0], -1, 1)).view(x.shape).to(x.dtype)
    return y, e4m3.to(F32), ts


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_nvfp4_equals_torchao(dtype, per_tensor):
    x = make_blocks(16, 128, 16, dtype, fmt="e2m1", scale=2.0 ** -2)
    if per_tensor:
        x.view(-1, 16)[4:6] = 1.0  # no NaN or inf: they would take the whole tensor
        x.view(-1, 16)[2] = x.view(-1, 16)[2] * 1e-33  # huge values would flush the rest
    expected, ref_scale, ref_ts = nvfp4_torchao(x, per_tensor)
    y, scale, ts = fakequant.fake_quantize_nvfp4(x, per_tensor_scale=per_tensor)
    assert_bits(scale, ref_scale, "block scale")
    if per_tensor:
        assert_bits(ts, ref_ts, "tensor scale")
    else:
        assert ts is None
    assert_bits(y, expected)


def test_nvfp4_zero_tensor_with_tensor_scale_is_nan_as_torchao():
    x = torch.zeros(2, 32)
    expected, _, _ = nvfp4_torchao(x, True)
    y, _, ts = fakequant.fake_quantize_nvfp4(x)
    assert torch.isnan(expected).all() and ts.item() == 0.0
    assert_bits(y, expected)


# --- ModelOpt profiles against ModelOpt's formulas ----------------------------------------


def modelopt_int(x, amax, bits, narrow):
    """modelopt.torch.quantization.tensor_quant._tensor_quant, with amax broadcast per element."""
    inputs, amax = x.float(), amax.float()
    max_bound = torch.tensor(2.0 ** (bits - 1) - 1.0)
    min_bound = -max_bound if narrow else -max_bound - 1
    scale = max_bound / amax
    zero = amax <= 1.0 / (1 << 24)
    scale[zero] = 0
    outputs = torch.clamp((inputs * scale).round_(), min_bound, max_bound)
    scale[zero] = 1.0
    return (outputs / scale).to(x.dtype)


def modelopt_fp8(x, amax):
    """modelopt.torch.quantization.tensor_quant._fp8_eager."""
    amax = amax.to(F32)
    safe_amax = torch.where(amax <= 1.0 / (1 << 24), torch.ones_like(amax), amax)
    scale = 448.0 / safe_amax
    scale_inv = 1 / scale
    q = (x.to(F32) * scale).clamp(min=-448.0, max=448.0).to(torch.float8_e4m3fn)
    return (q.to(F32) * scale_inv).to(x.dtype)


def modelopt_fp4(x, global_amax):
    """modelopt's fp4_fake_quant_kernel (Triton) in torch ops, 1 x 16 blocks: the E2M1 levels by
    its thresholds (ties to even), the sign put back with where(x >= 0)."""
    tile = x.float().view(x.shape[0], -1, 16)
    global_scale = global_amax.float() / (6.0 * 448.0)
    safe = torch.where(global_scale > 0.0, global_scale, torch.full_like(global_scale, 1e-12))
    block_max = tile.abs().amax(dim=2, keepdim=True)
    scaled = torch.minimum(block_max / (6.0 * safe), torch.tensor(448.0))
    quant = scaled.to(torch.float8_e4m3fn).to(F32) * global_scale
    quant = torch.where(quant >= 1e-5, quant, torch.ones_like(quant))
    a = tile.abs() / quant
    levels = [(0.25, True, 0.0), (0.75, False, 0.5), (1.25, True, 1.0), (1.75, False, 1.5), (2.5, True, 2.0),
              (3.5, False, 3.0), (5.0, True, 4.0)]
    q = torch.full_like(a, 6.0)
    for bound, inclusive, value in reversed(levels):
        q = torch.where(a <= bound if inclusive else a < bound, torch.full_like(a, value), q)
    r = q * quant
    return torch.where(tile >= 0, r, -r).view(x.shape).to(x.dtype)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("bits,narrow", [(4, True), (8, False)])
def test_int_modelopt_equals_modelopt_formula(dtype, bits, narrow):
    x = make_blocks(8, 256, 64, dtype, specials=True)
    x.view(-1, 64)[4] = 0.0  # no NaN (ModelOpt rejects a NaN amax)
    x.view(-1, 64)[5] = 1.0
    x.view(-1, 64)[7, :3] = torch.tensor([2.0 ** -24, -2.0 ** -25, 0.0])  # amax exactly 2^-24: zeros
    amax = x.float().abs().view(8, 4, 64).amax(dim=2, keepdim=True)
    expected = modelopt_int(x.view(8, 4, 64), amax, bits, narrow).view(x.shape)
    y, scale = fakequant.fake_quantize_int_modelopt(x, 64, bits, narrow)
    assert_bits(y, expected)
    qmax = 2.0 ** (bits - 1) - 1
    assert_bits(scale, torch.where(amax <= 2.0 ** -24, 1.0, torch.tensor(qmax) / amax).view(8, 4), "scale")
    assert torch.signbit(y.view(-1, 64)[7, 1])  # a zero block keeps its elements' signs
    # Per tensor.
    y, scale = fakequant.fake_quantize_int_modelopt(x, None, bits, narrow)
    assert_bits(y, modelopt_int(x, x.float().abs().amax(), bits, narrow))


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_fp8_modelopt_equals_modelopt_formula(dtype):
    x = make_blocks(8, 96, 96, dtype, fmt="e4m3", scale=2.0 ** -4)
    x[4, 32] = 1.0  # no NaN
    x[7] = 3e-8  # amax below 2^-24: counts as 1
    amax = x.float().abs().amax(dim=1, keepdim=True)
    y, scale = fakequant.fake_quantize_fp8(x, profile="modelopt")
    assert_bits(y, modelopt_fp8(x, amax))
    assert_bits(scale, 448.0 / torch.where(amax <= 2.0 ** -24, 1.0, amax), "scale")  # ModelOpt's expression
    y, _ = fakequant.fake_quantize_fp8(x, granularity="tensor", profile="modelopt")
    assert_bits(y, modelopt_fp8(x, x.float().abs().amax()))


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("per_tensor", [True, False])
def test_nvfp4_modelopt_equals_modelopt_formula(dtype, per_tensor):
    x = make_blocks(16, 128, 16, dtype, fmt="e2m1", scale=2.0 ** -2)
    g = x.view(-1, 16)
    g[4:6] = 1.0  # no NaN (undefined in ModelOpt's kernel) or inf
    g[7] = 0.0
    g[8] = torch.randn(16) * 1e-6  # E4M3 block scale rounds to 0: the total is replaced by 1.0
    x = x + 0.0  # no -0.0 input (underflowed subnormals): ModelOpt's where(x >= 0) makes it +0
    global_amax = x.float().abs().amax() if per_tensor else torch.tensor(2688.0)
    y, scale, ts = fakequant.fake_quantize_nvfp4(x, per_tensor_scale=per_tensor, profile="modelopt")
    assert_bits(y, modelopt_fp4(x, global_amax))
    e4m3 = (x.float().abs().view(16, -1, 16).amax(2) / (6.0 * global_amax / 2688.0)).to(torch.float8_e4m3fn)
    assert_bits(scale, e4m3.float(), "block scale")
    assert (scale.view(-1)[8] == 0) and (y.view(-1, 16)[8] == 0).all()  # the 1.0 fallback


# --- 2-D tiles, partial tiles, float16: the formula (reference.py) -------------------------


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("fmt,rule,tile,kwargs", [
    ("e2m1", "mx_floor", (2, 16), {}), ("e4m3", "mx_rceil", (1, 20), {}), ("e3m2", "mx_even", (3, 7), {}),
    ("e2m1", "nvfp4_torchao", (16, 16), {"tensor_scale": True}), ("e2m1", "nvfp4_modelopt", (16, 16), {}),
    ("e5m2", "fp8_torchao", (8, 24), {}), ("e4m3", "fp8_modelopt", (5, 9), {}),
    ("int", "int_affine", (3, 5), {}), ("int", "int_affine_float_zp", (1, 24), {"quant_min": -8, "quant_max": 7}),
    ("int", "int_modelopt", (4, 4), {"quant_min": -7, "quant_max": 7}),
])
def test_tiles_match_the_formula(dtype, fmt, rule, tile, kwargs):
    x = make_blocks(37, 50, 50, dtype, fmt=fmt, specials=False)
    x[3, :11] = 0.0
    x[5, 7] = math.nan
    x[9, 9] = 1e-40 if dtype != F16 else 1e-7
    x = x.view(37, 2, 25)
    got = OP(x, fmt, rule, *tile, **kwargs)
    y, mask, scale, zero_point, tensor_amax = block_formula(x, fmt, rule, *tile, **kwargs)
    assert_bits(got[0], y)
    assert torch.equal(unpack_mask(got[1], got[0]), mask)
    assert_bits(got[2], scale, "scale")
    assert torch.equal(got[3], zero_point) and got[4].shape == tensor_amax.shape


# --- gradient, dtypes, stochastic rounding --------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", ["per_token", "mx", "nvfp4", "fp8"])
def test_gradient_is_the_clipped_ste(device, fn):
    x = (torch.randn(6, 64, device=device) * 3).requires_grad_()
    call = {"per_token": lambda t: fakequant.fake_quantize_per_token(t, -8, 7)[0],
            "mx": lambda t: fakequant.fake_quantize_mx(t, "e2m1", 32, "floor")[0],
            "nvfp4": lambda t: fakequant.fake_quantize_nvfp4(t)[0],
            "fp8": lambda t: fakequant.fake_quantize_fp8(t, amax_bounds=(None, 1.0))[0]}[fn]
    y = call(x)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    args = {"per_token": ("int", "int_affine", 1, 64, -8, 7), "mx": ("e2m1", "mx_floor", 1, 32),
            "nvfp4": ("e2m1", "nvfp4_torchao", 1, 16), "fp8": ("e4m3", "fp8_torchao", 1, 64)}[fn]
    kwargs = {"tensor_scale": True} if fn == "nvfp4" else {"amax_upper": 1.0} if fn == "fp8" else {}
    out = OP(x.detach(), *args, **kwargs)
    mask = unpack_mask(out[1], out[0])
    assert torch.equal(dx, torch.where(mask, dy, torch.zeros_like(dy)))
    if fn in ("mx", "fp8"):
        assert not mask.all()  # FLOOR's scale and the clamped abs-max saturate some elements


def test_float16_input():
    x = make_blocks(8, 64, 32, F16, specials=True)
    for fmt, rule in [("e2m1", "mx_floor"), ("e4m3", "fp8_torchao"), ("e2m1", "nvfp4_torchao"),
                      ("int", "int_affine")]:
        got = OP(x, fmt, rule, 1, 32 if rule != "nvfp4_torchao" else 16)
        expected = block_formula(x, fmt, rule, 1, 32 if rule != "nvfp4_torchao" else 16)
        assert got[0].dtype == F16
        assert_bits(got[0], expected[0])


def test_axis_moves_the_blocks():
    x = torch.randn(64, 6, 5)
    y, scale = fakequant.fake_quantize_mx(x, "e4m3", 32, axis=0)
    y_ref, scale_ref = fakequant.fake_quantize_mx(x.movedim(0, -1).contiguous(), "e4m3", 32)
    assert y.shape == x.shape and scale.shape == (6, 5, 2)
    assert_bits(y, y_ref.movedim(-1, 0))
    assert_bits(scale, scale_ref)


def grid_step(v, fmt):
    """The spacing of the minifloat `fmt`'s grid at v (in scaled units)."""
    mbits, emin, _ = MINIFLOATS[fmt]
    _, e = torch.frexp(v.double())
    return torch.pow(2.0, (torch.clamp(e - 1, min=emin) - mbits).double()).float()


@pytest.mark.parametrize("fn", ["mx", "fp8", "nvfp4"])
def test_stochastic_rounding_is_reproducible_and_unbiased(fn):
    x = torch.randn(4, 64)
    call = {"mx": lambda g: fakequant.fake_quantize_mx(x, "e2m1", rounding="stochastic", generator=g),
            "fp8": lambda g: fakequant.fake_quantize_fp8(x, rounding="stochastic", generator=g),
            "nvfp4": lambda g: fakequant.fake_quantize_nvfp4(x, rounding="stochastic", generator=g)}[fn]
    a = call(torch.Generator().manual_seed(7))[0]
    b = call(torch.Generator().manual_seed(7))[0]
    c = call(torch.Generator().manual_seed(8))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # An explicit seed tensor is the op's seed as given.
    seed = torch.tensor([3, 4], dtype=torch.int64)
    args = {"mx": ("e2m1", "mx_floor", 1, 32), "fp8": ("e4m3", "fp8_torchao", 1, 64),
            "nvfp4": ("e2m1", "nvfp4_torchao", 1, 16)}[fn]
    explicit = {"mx": lambda: fakequant.fake_quantize_mx(x, "e2m1", rounding="stochastic", seed=seed),
                "fp8": lambda: fakequant.fake_quantize_fp8(x, rounding="stochastic", seed=seed),
                "nvfp4": lambda: fakequant.fake_quantize_nvfp4(x, rounding="stochastic", seed=seed)}[fn]()[0]
    assert torch.equal(explicit, OP(x, *args, tensor_scale=fn == "nvfp4", rounding="stochastic", seed=seed)[0])
    with pytest.raises(ValueError, match="either seed or generator"):
        fakequant.fake_quantize_block(x, *args, rounding="stochastic", seed=seed, generator=torch.Generator())
    # The element's scale (what the rounded value is multiplied back with) and the mask.
    _, mask, scale, _, amax = OP(x, *args, tensor_scale=fn == "nvfp4")
    per = scale.repeat_interleave(args[3], dim=1)
    if fn == "nvfp4":
        per = per * (amax / 2688.0)
    step = grid_step(x / per, args[0]) * per
    inside = unpack_mask(mask, x)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([call(g)[0] for _ in range(400)])
    # Each draw is a grid neighbour of x; the mean of 400 tends to x (its standard deviation is
    # at most step / 40: a 5-sigma bound is step / 8).
    assert ((draws - x).abs() <= step * 1.001)[:, inside].all()
    close = ((draws.mean(0) - x).abs() <= step / 8)[inside]
    assert close.float().mean() > 0.99


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.tensor(1.0), "e2m1", "mx_floor"), {}, r"fake_quant_block: input must have at least 1 dimension"),
    ((torch.randn(4, 8, dtype=torch.float64), "e2m1", "mx_floor"), {}, r"input must be float32, float16 or bfloat16"),
    ((torch.randn(4, 8), "fp4", "mx_floor"), {}, r"format must be one of 'int', 'e4m3', .* got 'fp4'"),
    ((torch.randn(4, 8), "e2m1", "mx"), {}, r"scale_rule must be one of 'int_affine', .* got 'mx'"),
    ((torch.randn(4, 8), "int", "mx_floor"), {}, r"scale_rule 'mx_floor' does not take format 'int'"),
    ((torch.randn(4, 8), "e4m3", "nvfp4_torchao"), {}, r"scale_rule 'nvfp4_torchao' does not take format 'e4m3'"),
    ((torch.randn(4, 8), "e2m1", "fp8_torchao"), {}, r"does not take format 'e2m1'"),
    ((torch.randn(4, 8), "e2m1", "mx_floor", 0, 32), {}, r"block_rows and block_cols must be >= 1, got 0 x 32"),
    ((torch.randn(4, 8), "int", "int_affine", 1, 8, 5, 4), {}, r"quant_min \(5\) must be <= quant_max \(4\)"),
    ((torch.randn(4, 8), "int", "int_modelopt", 1, 8, 0, 255), {}, r"symmetric signed range"),
    ((torch.randn(4, 8), "e2m1", "mx_floor", 1, 8, -8, 7), {}, r"quant_min and quant_max are only read by the int"),
    ((torch.randn(4, 8), "e2m1", "mx_floor"), {"eps": 1e-3}, r"eps is only read by the int rules"),
    ((torch.randn(4, 8), "int", "int_affine"), {"eps": 0.0}, r"eps must be finite and >= 1.17549435e-38"),
    ((torch.randn(4, 8), "e4m3", "fp8_modelopt"), {"amax_lower": 1.0}, r"amax_lower and amax_upper are only read"),
    ((torch.randn(4, 8), "e4m3", "fp8_torchao"), {"amax_lower": 2.0, "amax_upper": 1.0},
     r"amax_lower must be <= amax_upper"),
    ((torch.randn(4, 8), "e2m1", "mx_floor"), {"tensor_scale": True}, r"tensor_scale is only read by the nvfp4"),
    ((torch.randn(4, 8), "int", "int_affine"), {"rounding": "stochastic", "seed": torch.zeros(2, dtype=torch.long)},
     r"rounding must be 'half_even' for the int rules"),
    ((torch.randn(4, 8), "e2m1", "mx_floor"), {"rounding": "nearest"}, r"rounding must be one of 'half_even'"),
    ((torch.randn(4, 8), "e2m1", "mx_floor"), {"rounding": "stochastic"}, r"rounding='stochastic' needs a seed"),
    ((torch.randn(4, 8), "e2m1", "mx_floor"), {"seed": torch.zeros(2, dtype=torch.long)},
     r"seed is only used by rounding='stochastic'"),
    ((torch.randn(4, 8), "e2m1", "mx_floor"), {"rounding": "stochastic", "seed": torch.zeros(3, dtype=torch.long)},
     r"seed must be a 1-D tensor of 2 elements"),
])
def test_bad_input_raises_naming_the_argument(args, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        OP(*args, **kwargs)
    # The fake kernel mirrors the checks that decide what is allocated (not the value checks).
    if not any(m in message for m in VALUE_CHECKS):
        meta = (args[0].to("meta"), *args[1:])
        with pytest.raises(RuntimeError, match=message):
            OP(*meta, **{k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})


VALUE_CHECKS = ("must be float32", "eps must be finite", r"must be <= quant_max", "symmetric",
                "amax_lower must be <=")


def test_python_api_rejects_bad_choices():
    x = torch.randn(4, 32)
    with pytest.raises(RuntimeError, match=r"scale_mode must be one of 'floor'"):
        fakequant.fake_quantize_mx(x, scale_mode="round")
    with pytest.raises(RuntimeError, match=r"granularity must be one of 'row', 'tensor', 'block'"):
        fakequant.fake_quantize_fp8(x, granularity="column")
    with pytest.raises(RuntimeError, match=r"tile must be \(1, 16\) or \(16, 16\)"):
        fakequant.fake_quantize_nvfp4(x, tile=(1, 32))
    with pytest.raises(ValueError, match=r"generator is only used by rounding='stochastic'"):
        fakequant.fake_quantize_mx(x, generator=torch.Generator())


def test_saved_for_backward_is_the_one_bit_mask():
    x = torch.randn(64, 256, requires_grad=True)
    for fn in (lambda: fakequant.fake_quantize_per_token(x), lambda: fakequant.fake_quantize_mx(x),
               lambda: fakequant.fake_quantize_nvfp4(x), lambda: fakequant.fake_quantize_fp8(x)):
        _, saved = saved_for_backward(fn)
        assert sum(t.numel() * t.element_size() for t in saved) == x.numel() // 8
