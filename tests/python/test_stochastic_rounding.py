"""rounding="stochastic" of fake_quant_per_tensor / fake_quant_per_channel: bit-exact against
Philox4x32-10 and the rounding formula written out here, statistics (unbiased,
P(ceil) = frac), seeding from the torch generator, autograd, opcheck, torch.compile, bad
input. ATen has no stochastic fake quant, so the formula is the only reference."""

from __future__ import annotations

import math

import pytest
import torch

import fakequant
from conftest import DEVICES, HAS_CUDA
from reference import make_input, unpack_mask

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "transposed", "strided", "channels_last"]

# --- Philox4x32-10 and the formula, written out ---------------------------------------
# In torch int64 arithmetic (no numpy needed on the GPU machine): 32-bit words held in int64,
# the 32 x 32 -> 64-bit products split so that no intermediate exceeds 2^49.

_M32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for a constant a < 2^32 and words b."""
    t0 = (a & 0xFFFF) * b                # < 2^48
    t1 = (a >> 16) * b                   # < 2^48
    s = t0 + ((t1 & 0xFFFF) << 16)       # < 2^49; a * b = (t1 >> 16) * 2^32 + s
    return (t1 >> 16) + (s >> 32), s & _M32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 (Salmon et al., SC 2011) on int64 tensors holding 32-bit words."""
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_words(n: int, seed: torch.Tensor) -> torch.Tensor:
    """The random word of memory offsets 0..n-1: word i % 4 of Philox(counter = (lo(i/4),
    hi(i/4), lo(seed[1]), hi(seed[1])), key = (lo(seed[0]), hi(seed[0])))."""
    key, offset = (int(v) & (2**64 - 1) for v in seed.tolist())
    i = torch.arange(n, dtype=torch.int64)
    quad = i // 4
    words = philox4x32_10(quad & _M32, quad >> 32, torch.full((n,), offset & _M32), torch.full((n,), offset >> 32),
                          key & _M32, key >> 32)
    return torch.stack(words, dim=1)[i, i % 4] if n else torch.zeros(0, dtype=torch.int64)


def uniforms_like(y: torch.Tensor, seed) -> torch.Tensor:
    """u = (word >> 8) * 2^-24 (float64) of every element of y, by y's memory offset."""
    n = y.numel()
    u = (philox_words(n, seed.cpu()) >> 8).double() * 2.0**-24
    out = torch.empty_like(y, dtype=torch.float64, device="cpu")
    out.as_strided((n,), (1,)).copy_(u)
    return out


def floor_plus(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """floor(v + u) exactly: in float64 the sum is exact for |v| < 2^23 (fp32 v); larger
    floats are integers, and inf/NaN pass through."""
    return torch.where(v.abs() < 2.0**23, torch.floor(v + u), v)


def stochastic_formula(x, y_like, scale, zero_point, quant_min, quant_max, seed, axis=None):
    """(output, bool mask) of stochastic quant-dequant, written out (docs/numerics.md), on the
    CPU in float64; `y_like` gives the memory order (the op's output)."""
    x = x.cpu()
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.cpu().float().reshape(shape if axis is not None else ())
    inv = torch.reciprocal(s)  # fp32, correctly rounded
    u = uniforms_like(y_like.cpu(), seed.cpu())
    if zero_point.is_floating_point():
        z = zero_point.cpu().float().reshape(shape).double()
        shifted = (x.float().double() * inv.double() + z).float().double()  # one rounding, as fma
        q = floor_plus(shifted, u)
    else:
        z = zero_point.cpu().reshape(shape if axis is not None else ()).double()
        q = floor_plus((x.float() * inv).double(), u) + z
    mask = (q >= quant_min) & (q <= quant_max)
    y = (q.clamp(quant_min, quant_max) - z) * s.double()
    y = torch.where(torch.isnan(x), x.double(), y)
    return y.float().to(x.dtype), mask


def random_seed(device) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)


def per_tensor_qparams(device, scale=0.05, zp=3):
    return (torch.tensor([scale], dtype=torch.float32, device=device),
            torch.tensor([zp], dtype=torch.int32, device=device))


def channel_qparams(x, axis, quant_min, quant_max, float_zp):
    c = x.shape[axis]
    scale = (torch.rand(c, device=x.device) * 0.04 + 0.02).float()
    if float_zp:
        zp = torch.empty(c, device=x.device).uniform_(quant_min, quant_max)
    else:
        zp = torch.randint(quant_min // 2, quant_max // 2 + 1, (c,), dtype=torch.int32, device=x.device)
    return scale, zp


def st_per_tensor(x, scale, zp, qmin, qmax, seed):
    return torch.ops.fakequant.fake_quant_per_tensor(x, scale, zp, qmin, qmax, "stochastic", seed)


def st_per_channel(x, scale, zp, axis, qmin, qmax, seed):
    return torch.ops.fakequant.fake_quant_per_channel(x, scale, zp, axis, qmin, qmax, "stochastic", seed)


# --- the written-out Philox itself ------------------------------------------------------


def test_written_out_philox_known_answers():
    # Random123's kat_vectors for philox4x32_10: the reference above is Philox.
    kats = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
            ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
            ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
             (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kats:
        got = philox4x32_10(*[torch.tensor([c], dtype=torch.int64) for c in ctr], *key)
        assert [int(g) for g in got] == list(want)


# --- bit-exact against the formula -------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (3, 5, 7), (2, 3, 17, 19), (1031,), (0,), (4, 0, 3)])
def test_per_tensor_matches_formula(device, dtype, layout, shape):
    x = make_input(shape, dtype, device, layout)
    scale, zp = per_tensor_qparams(device, scale=0.04, zp=-5)
    seed = random_seed(device)
    y, packed = st_per_tensor(x, scale, zp, -128, 127, seed)
    ref_y, ref_mask = stochastic_formula(x, y, scale, zp, -128, 127, seed)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y.cpu(), ref_y), (y.cpu().float() - ref_y.float()).abs().max()
    assert torch.equal(unpack_mask(packed, y).cpu(), ref_mask)
    if x.dim() == 4 and layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    if x.numel() > 100:
        assert ref_mask.any() and not ref_mask.all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qmin,qmax", [(-2, 1), (0, 3), (-8, 7), (0, 255), (-32768, 32767), (0, 65535)])
def test_per_tensor_every_range(device, qmin, qmax):
    x = make_input((5, 301), torch.float32, device)
    amax = x.abs().amax().item()
    scale = torch.tensor([amax / max(qmax - qmin, 1) * 0.3], device=device)
    zp = torch.tensor([(qmin + qmax) // 2], dtype=torch.int32, device=device)
    seed = random_seed(device)
    y, packed = st_per_tensor(x, scale, zp, qmin, qmax, seed)
    ref_y, ref_mask = stochastic_formula(x, y, scale, zp, qmin, qmax, seed)
    assert torch.equal(y.cpu(), ref_y)
    assert torch.equal(unpack_mask(packed, y).cpu(), ref_mask)
    assert ref_mask.any() and not ref_mask.all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 3, -1, -3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "strided"])
@pytest.mark.parametrize("float_zp", [False, True])
def test_per_channel_matches_formula(device, dtype, axis, layout, float_zp):
    x = make_input((3, 6, 5, 7), dtype, device, layout)
    scale, zp = channel_qparams(x, axis, -128, 127, float_zp)
    seed = random_seed(device)
    y, packed = st_per_channel(x, scale, zp, axis, -128, 127, seed)
    ref_y, ref_mask = stochastic_formula(x, y, scale, zp, -128, 127, seed, axis=axis % x.dim())
    assert torch.equal(y.cpu(), ref_y), (y.cpu().float() - ref_y.float()).abs().max()
    assert torch.equal(unpack_mask(packed, y).cpu(), ref_mask)
    assert ref_mask.any() and not ref_mask.all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,axis", [((1,), 0), ((7,), 0), ((5, 1), 1), ((0, 4), 1), ((9, 8, 1, 3), 2)])
def test_per_channel_odd_and_empty_shapes(device, shape, axis):
    x = torch.randn(shape, device=device)
    scale, zp = channel_qparams(x, axis, -128, 127, False)
    seed = random_seed(device)
    y, packed = st_per_channel(x, scale, zp, axis, -128, 127, seed)
    ref_y, ref_mask = stochastic_formula(x, y, scale, zp, -128, 127, seed, axis=axis)
    assert torch.equal(y.cpu(), ref_y)
    assert torch.equal(unpack_mask(packed, y).cpu(), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_and_on_level_inputs(device):
    # NaN -> NaN, +-inf saturate (mask 0), values exactly on a level never move.
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -0.5, 2.0, -3.5], device=device)
    scale, zp = per_tensor_qparams(device, scale=0.5, zp=1)
    for _ in range(20):
        y, packed = st_per_tensor(x, scale, zp, -8, 7, random_seed(device))
        assert torch.isnan(y[0])
        assert y[1:].tolist() == [3.0, -4.5, 1.0, -0.5, 2.0, -3.5]
        assert unpack_mask(packed, y).tolist() == [False, False, False, True, True, True, True]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_equals_cpu_bit_for_bit(dtype, layout):
    x = make_input((4, 8, 33, 17), dtype, "cpu", layout)
    seed = random_seed("cpu")
    s, z = per_tensor_qparams("cpu")
    y_cpu, m_cpu = st_per_tensor(x, s, z, -128, 127, seed)
    y_gpu, m_gpu = st_per_tensor(x.cuda(), s.cuda(), z.cuda(), -128, 127, seed.cuda())
    assert torch.equal(y_cpu, y_gpu.cpu()) and torch.equal(m_cpu, m_gpu.cpu())
    sc, zc = channel_qparams(x, 1, -128, 127, True)
    y_cpu, m_cpu = st_per_channel(x, sc, zc, 1, -128, 127, seed)
    y_gpu, m_gpu = st_per_channel(x.cuda(), sc.cuda(), zc.cuda(), 1, -128, 127, seed.cuda())
    assert torch.equal(y_cpu, y_gpu.cpu()) and torch.equal(m_cpu, m_gpu.cpu())


# --- only the two neighbouring levels ---------------------------------------------------


def neighbour_levels(x, scale, zp, quant_min, quant_max):
    """The dequantised floor and ceil levels of x / scale (per-tensor, integer zero point),
    clamped, in x's dtype, on the CPU; and whether the two differ."""
    v = (x.float().cpu() * torch.reciprocal(scale.cpu())).double()
    z = float(zp.item())
    lo = (torch.floor(v) + z).clamp(quant_min, quant_max)
    hi = (torch.ceil(v) + z).clamp(quant_min, quant_max)
    s = scale.cpu().double()
    return ((lo - z) * s).float().to(x.dtype), ((hi - z) * s).float().to(x.dtype), lo != hi


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_are_the_floor_or_the_ceil_level(device, dtype):
    x = (torch.randn(20000, device=device) * 2.0).to(dtype)
    scale, zp = per_tensor_qparams(device, scale=0.0371, zp=7)
    y = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic")
    y_lo, y_hi, differ = neighbour_levels(x, scale, zp, -128, 127)
    yc = y.cpu()
    assert ((yc == y_lo) | (yc == y_hi)).all()
    assert (yc == y_lo)[differ].any() and (yc == y_hi)[differ].any()  # both levels occur


# --- statistics ----------------------------------------------------------------------------
# Each draw of q is floor(v) + Bernoulli(frac): over N independent draws the mean of q has
# standard deviation sqrt(frac (1 - frac) / N). The bounds are 6 of those (a false failure
# about once in 5e8 per check) plus 2^-24, the granularity of u, and they are checked to
# reject half_even rounding on the same data.

N_DRAWS = 1 << 18
FRACS = [0.03125, 0.25, 0.3, 0.5, 0.7, 0.875, 0.999]


def mean_within_bound(q: torch.Tensor, expected: float, frac: float, n: int) -> bool:
    sigma = math.sqrt(max(frac * (1 - frac), 1e-12) / n)
    return abs(q.double().mean().item() - expected) <= 6 * sigma + 2.0**-24


def fixed_values(device, ints=(-3, 0, 5)):
    """(x, v) for every frac and integer part, each value repeated N_DRAWS times along dim 1;
    the scale is a power of two so that q = y / scale + zp exactly."""
    v = torch.tensor([k + f for k in ints for f in FRACS] + [k - f for k in ints for f in FRACS], dtype=torch.float64)
    x = (v * 0.0625).float()  # exact multiples: v = x * 16 exactly in fp32 for these
    return x.to(device).unsqueeze(1).expand(-1, N_DRAWS).contiguous(), v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["per_tensor", "per_channel"])
def test_unbiased_and_p_ceil_equals_frac(device, op):
    x, v = fixed_values(device)
    scale, zp = per_tensor_qparams(device, scale=0.0625, zp=2)
    seed = random_seed(device)
    if op == "per_tensor":
        y, _ = st_per_tensor(x, scale, zp, -128, 127, seed)
        y_even, _ = torch.ops.fakequant.fake_quant_per_tensor(x, scale, zp, -128, 127, "half_even")
    else:
        c = x.shape[0]
        sc, zc = scale.expand(c).contiguous(), zp.expand(c).contiguous()
        y, _ = st_per_channel(x, sc, zc, 0, -128, 127, seed)
        y_even, _ = torch.ops.fakequant.fake_quant_per_channel(x, sc, zc, 0, -128, 127, "half_even")
    q = (y.double() / 0.0625 + 2).cpu()
    q_even = (y_even.double() / 0.0625 + 2).cpu()
    for row in range(v.numel()):
        vi = v[row].item()
        frac = vi - math.floor(vi)
        expected = vi + 2
        assert mean_within_bound(q[row], expected, frac, N_DRAWS), (vi, q[row].mean().item())
        p_ceil = (q[row] == math.floor(vi) + 3).double().mean().item()
        assert abs(p_ceil - frac) <= 6 * math.sqrt(frac * (1 - frac) / N_DRAWS) + 2.0**-24, (vi, p_ceil)
        assert ((q[row] == math.floor(vi) + 2) | (q[row] == math.floor(vi) + 3)).all()
        # The same bound rejects round-to-nearest (a test that can fail).
        assert not mean_within_bound(q_even[row], expected, frac, N_DRAWS)


@pytest.mark.parametrize("device", DEVICES)
def test_dequantized_mean_converges_to_x(device):
    # What training relies on: E[y] = x inside the range, for any scale. The fp32 product
    # x * (1/scale) and the fp32 dequantisation each add at most a few ulp of bias.
    x0 = torch.tensor([0.1234, -0.777, 1.5001, -2.25, 0.0101], device=device)
    x = x0.unsqueeze(1).expand(-1, N_DRAWS).contiguous()
    scale, zp = per_tensor_qparams(device, scale=0.0417, zp=-3)
    y = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic")
    y_even = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127)
    for row in range(x0.numel()):
        xi = x0[row].item()
        frac = (xi / 0.0417) % 1.0
        bound = 6 * 0.0417 * math.sqrt(frac * (1 - frac) / N_DRAWS) + 1e-6 * abs(xi) + 1e-7
        assert abs(y[row].double().mean().item() - xi) <= bound, xi
        assert abs(y_even[row].double().mean().item() - xi) > bound  # nearest is biased here


@pytest.mark.parametrize("device", DEVICES)
def test_unbiased_over_calls_with_fresh_seeds(device):
    # Many calls of a small tensor through the Python API: each call draws its own seed, so
    # the per-element mean over calls converges too (a reused seed would freeze every draw).
    torch.manual_seed(1234)
    x = torch.rand(64, device=device) * 8 - 4
    scale, zp = per_tensor_qparams(device, scale=0.25, zp=0)
    calls = 3000
    acc = torch.zeros(64, dtype=torch.float64, device=device)
    for _ in range(calls):
        acc += fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic").double()
    mean_q = (acc / calls / 0.25).cpu()
    v = (x.cpu().double() / 0.25)
    frac = v - torch.floor(v)
    bound = 6 * torch.sqrt(frac * (1 - frac) / calls) + 1e-6
    assert ((mean_q - v).abs() <= bound).all(), ((mean_q - v).abs() - bound).max()


# --- seeding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_reproducible_with_manual_seed_and_generator(device):
    x = torch.randn(3, 1000, device=device)
    scale, zp = per_tensor_qparams(device)
    torch.manual_seed(2024)
    a = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic")
    b = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic")
    torch.manual_seed(2024)
    a2 = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic")
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)  # the next call draws a new seed
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    c1, m1 = fakequant.fake_quantize_per_channel_with_mask(x, scale.expand(3), zp.expand(3), 0, -128, 127,
                                                           rounding="stochastic", generator=g1)
    c2, m2 = fakequant.fake_quantize_per_channel_with_mask(x, scale.expand(3), zp.expand(3), 0, -128, 127,
                                                           rounding="stochastic", generator=g2)
    assert torch.equal(c1, c2) and torch.equal(m1, m2)


@pytest.mark.parametrize("device", DEVICES)
def test_api_draws_the_seed_with_randint_from_the_generator(device):
    x = torch.randn(517, device=device)
    scale, zp = per_tensor_qparams(device)
    g = torch.Generator(device=device).manual_seed(99)
    y, mask = fakequant.fake_quantize_per_tensor_with_mask(x, scale, zp, -128, 127, rounding="stochastic", generator=g)
    replay = torch.Generator(device=device).manual_seed(99)
    seed = torch.randint(0, fakequant.ops.SEED_HIGH, (2,), dtype=torch.int64, device=device, generator=replay)
    y_op, mask_op = st_per_tensor(x, scale, zp, -128, 127, seed)
    assert torch.equal(y, y_op) and torch.equal(mask, mask_op)
    assert torch.equal(g.get_state(), replay.get_state())  # exactly one draw


@pytest.mark.parametrize("device", DEVICES)
def test_different_seeds_differ(device):
    x = torch.randn(4096, device=device)
    scale, zp = per_tensor_qparams(device)
    base = torch.tensor([123456789, 987654321], dtype=torch.int64, device=device)
    y0, _ = st_per_tensor(x, scale, zp, -128, 127, base)
    assert torch.equal(y0, st_per_tensor(x, scale, zp, -128, 127, base.clone())[0])
    for delta in ([1, 0], [0, 1], [1 << 32, 0], [0, 1 << 32]):
        other = base + torch.tensor(delta, dtype=torch.int64, device=device)
        y1, _ = st_per_tensor(x, scale, zp, -128, 127, other)
        # About half of the 4096 elements change (those whose two levels differ and draw apart).
        assert (y0 != y1).sum().item() > 1000, delta


# --- autograd ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
def test_gradient_is_grad_times_stochastic_mask(device, dtype, layout):
    x = make_input((2, 3, 9, 11), dtype, device, layout).requires_grad_()
    scale, zp = per_tensor_qparams(device, scale=0.02, zp=0)
    seed = random_seed(device)
    y, _ = st_per_tensor(x, scale, zp, -16, 15, seed)
    dy = torch.randn(y.shape, device=device, dtype=dtype)  # contiguous, whatever y's layout
    (dx,) = torch.autograd.grad(y, x, dy)
    _, ref_mask = stochastic_formula(x.detach(), y, scale, zp, -16, 15, seed)
    assert ref_mask.any() and not ref_mask.all()
    assert torch.equal(dx.cpu(), dy.cpu() * ref_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_through_the_api_per_channel(device):
    w = torch.randn(8, 16, device=device, requires_grad=True)
    scale, zp = channel_qparams(w, 0, -8, 7, False)
    g = torch.Generator(device=device).manual_seed(5)
    y, packed = fakequant.fake_quantize_per_channel_with_mask(w, scale, zp, 0, -8, 7, rounding="stochastic",
                                                              generator=g)
    dy = torch.randn_like(y)
    (dw,) = torch.autograd.grad(y, w, dy)
    mask = unpack_mask(packed, y)
    assert mask.any() and not mask.all()
    assert torch.equal(dw, dy * mask)
    seed = torch.randint(0, fakequant.ops.SEED_HIGH, (2,), dtype=torch.int64, device=device,
                         generator=torch.Generator(device=device).manual_seed(5))
    _, ref_mask = stochastic_formula(w.detach(), y, scale, zp, -8, 7, seed, axis=0)
    assert torch.equal(mask.cpu(), ref_mask)


# --- custom-op machinery -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_api_draws_in_graph(device, dynamic):
    def step(x, w, scale, zp):
        xq, mask = fakequant.fake_quantize_per_channel_with_mask(x, scale, zp, 1, -128, 127, rounding="stochastic")
        return (xq * w).sum(), xq, mask

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
    for n in (33, 50):
        x = (torch.randn(n, 16, device=device) * 2).requires_grad_()
        w = torch.randn(16, device=device)
        scale, zp = channel_qparams(x, 1, -128, 127, False)
        torch.manual_seed(11)
        loss, xq, mask = compiled(x, w, scale, zp)
        torch.manual_seed(11)
        _, xq_again, _ = compiled(x, w, scale, zp)
        assert torch.equal(xq, xq_again)  # reproducible under torch.manual_seed
        (dx,) = torch.autograd.grad(loss, x)
        m = unpack_mask(mask, xq)
        assert m.any() and not m.all()
        assert torch.equal(dx, w.expand_as(x) * m)
        # Where the mask is set, q is one of the two levels next to x / scale + zp (the
        # division back from y is inexact, hence the tolerance).
        v = (x.detach().float() * torch.reciprocal(scale)).double() + zp.double()
        q = xq.detach().double() / scale.double() + zp.double()
        near_floor = (q - torch.floor(v)).abs() < 1e-3
        near_ceil = (q - torch.ceil(v)).abs() < 1e-3
        assert (near_floor | near_ceil)[m].all()
        assert near_floor[m].any() and (near_ceil & ~near_floor)[m].any()


# --- bad input -----------------------------------------------------------------------------


def _per_tensor(device="cpu", rounding="stochastic", seed="default"):
    x = torch.randn(10, device=device)
    if seed == "default":
        seed = torch.zeros(2, dtype=torch.int64, device=device)
    return torch.ops.fakequant.fake_quant_per_tensor(
        x, torch.tensor([0.1], device=device), torch.tensor([0], dtype=torch.int32, device=device), -128, 127,
        rounding, seed)


def _per_channel(device="cpu", rounding="stochastic", seed="default"):
    x = torch.randn(2, 3, device=device)
    if seed == "default":
        seed = torch.zeros(2, dtype=torch.int64, device=device)
    return torch.ops.fakequant.fake_quant_per_channel(
        x, torch.full((3,), 0.1, device=device), torch.zeros(3, dtype=torch.int32, device=device), 1, -128, 127,
        rounding, seed)


BAD_SEEDS = [
    (dict(seed=None), r"rounding='stochastic' needs a seed: an int64 tensor of 2 elements"),
    (dict(seed=torch.zeros(2, dtype=torch.int32)),
     r"seed must be an int64 tensor of 2 elements .* got (Int|torch\.int32)"),
    (dict(seed=torch.zeros(2)), r"seed must be an int64 tensor of 2 elements .* got (Float|torch\.float32)"),
    (dict(seed=torch.zeros(3, dtype=torch.int64)), r"seed must be a 1-D tensor of 2 elements .* got shape \[3\]"),
    (dict(seed=torch.zeros(2, 1, dtype=torch.int64)), r"seed must be a 1-D tensor of 2 elements .* got shape \[2, 1\]"),
    (dict(seed=torch.tensor(5)), r"seed must be a 1-D tensor of 2 elements .* got shape \[\]"),
    (dict(rounding="half_even", seed=torch.zeros(2, dtype=torch.int64)),
     r"seed is only used by rounding='stochastic'; pass seed=None with rounding='half_even'"),
    (dict(rounding="half_away", seed=torch.zeros(2, dtype=torch.int64)),
     r"seed is only used by rounding='stochastic'; pass seed=None with rounding='half_away'"),
    (dict(rounding="Stochastic"), r"rounding must be one of 'half_even', 'half_away', 'stochastic', got 'Stochastic'"),
]


@pytest.mark.parametrize("call,op", [(_per_tensor, "fake_quant_per_tensor"), (_per_channel, "fake_quant_per_channel")])
@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: the fake kernel gives the same messages
@pytest.mark.parametrize("over,message", BAD_SEEDS)
def test_bad_seed_raises_naming_it(call, op, device, over, message):
    over = dict(over)
    if isinstance(over.get("seed"), torch.Tensor):
        over["seed"] = over["seed"].to(device)
    with pytest.raises(RuntimeError, match=rf"fakequant\.{op}: {message}"):
        call(device, **over)


@pytest.mark.parametrize("call,op", [(_per_tensor, "fake_quant_per_tensor"), (_per_channel, "fake_quant_per_channel")])
def test_seed_on_another_device(call, op):
    with pytest.raises(RuntimeError, match=rf"fakequant\.{op}: seed must be on the same device as input \(cpu\), "
                                           r"got meta"):
        call("cpu", seed=torch.zeros(2, dtype=torch.int64, device="meta"))
    if HAS_CUDA:
        with pytest.raises(RuntimeError, match=r"seed must be on the same device as input \(cuda:0\), got cpu"):
            call("cuda", seed=torch.zeros(2, dtype=torch.int64))


def test_rejected_call_leaves_the_seed_alone():
    seed = torch.tensor([3, 4], dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"quant_min \(5\) must be <= quant_max \(4\)"):
        torch.ops.fakequant.fake_quant_per_tensor(torch.randn(8), torch.tensor([0.1]),
                                                  torch.tensor([0], dtype=torch.int32), 5, 4, "stochastic", seed)
    assert seed.tolist() == [3, 4]


def test_generator_with_a_deterministic_rounding_is_an_error():
    x = torch.randn(8)
    scale, zp = per_tensor_qparams("cpu")
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"generator is only used by rounding='stochastic', got rounding='half_even'"):
        fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, generator=g)
    with pytest.raises(ValueError, match=r"got rounding='half_away'"):
        fakequant.fake_quantize_per_channel_with_mask(x, scale, zp, 0, -128, 127, rounding="half_away", generator=g)
    assert "stochastic" in fakequant.ROUNDINGS


def test_strided_seed_is_accepted():
    x = torch.randn(100)
    scale, zp = per_tensor_qparams("cpu")
    seed4 = torch.tensor([11, -1, 22, -1], dtype=torch.int64)
    y, _ = st_per_tensor(x, scale, zp, -128, 127, seed4[::2])
    assert torch.equal(y, st_per_tensor(x, scale, zp, -128, 127, torch.tensor([11, 22]))[0])


# --- CUDA only -----------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_never_syncs():
    x = torch.randn(4096, device="cuda", requires_grad=True)
    w = torch.randn(64, 64, device="cuda", requires_grad=True)
    scale, zp = per_tensor_qparams("cuda", scale=0.02, zp=0)
    sc, zc = channel_qparams(w, 0, -127, 127, False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, rounding="stochastic")
        wq = fakequant.fake_quantize_per_channel(w, sc, zc, 0, -127, 127, rounding="stochastic")
        (y.sum() + wq.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_graph_capture_fresh_draw_per_replay():
    static_x = torch.randn(8192, device="cuda") * 2
    scale, zp = per_tensor_qparams("cuda", scale=0.05, zp=0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fakequant.fake_quantize_per_tensor(static_x, scale, zp, -128, 127, rounding="stochastic")  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fakequant.fake_quantize_per_tensor(static_x, scale, zp, -128, 127, rounding="stochastic")
    g.replay()
    first = out.clone()
    g.replay()
    torch.cuda.synchronize()
    assert not torch.equal(first, out)  # the captured randint draws a new seed per replay
    y_lo, y_hi, _ = neighbour_levels(static_x, scale, zp, -128, 127)
    for y in (first, out):
        assert ((y.cpu() == y_lo) | (y.cpu() == y_hi)).all()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_graph_capture_with_a_static_seed():
    static_x = torch.randn(4099, device="cuda")
    seed = torch.tensor([1, 2], dtype=torch.int64, device="cuda")
    scale, zp = per_tensor_qparams("cuda", scale=0.03, zp=1)
    st_per_tensor(static_x, scale, zp, -128, 127, seed)  # warm-up
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, mask = st_per_tensor(static_x, scale, zp, -128, 127, seed)
    for new_seed in ([5, 6], [-7, 1 << 40]):
        static_x.copy_(torch.randn_like(static_x))
        seed.copy_(torch.tensor(new_seed, dtype=torch.int64))
        g.replay()
        torch.cuda.synchronize()
        ref_y, ref_mask = stochastic_formula(static_x, out, scale, zp, -128, 127, seed)
        assert torch.equal(out.cpu(), ref_y) and torch.equal(unpack_mask(mask, out).cpu(), ref_mask)
