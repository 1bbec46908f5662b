"""Independent references for the tests: the numerics contract (docs/numerics.md) written
out with plain torch ops in float64, and helpers to read the packed mask."""

from __future__ import annotations

import math

import numpy as np
import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps


def make_input(shape, dtype, device, layout="contiguous", spread=3.0):
    """Random data with two values far outside any quantisation range (finite in every dtype)."""
    x = torch.randn(shape, device=device) * spread
    if x.numel() > 2:
        x.view(-1)[0] = 3.0e4
        x.view(-1)[1] = -3.0e4
    x = x.to(dtype)
    if layout == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1)
    elif layout == "strided":
        x = torch.stack([x, x.neg()], dim=-1)[..., 0]  # every other element: not dense
    elif layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def fake_quant_formula(x, scale, zero_point, quant_min, quant_max, rounding="half_even"):
    """(output, bool mask) of the affine quant-dequant, written out:
    q = round(x * fp32(1/scale)) + zp; y = (clamp(q) - zp) * scale; NaN -> NaN."""
    s = scale.reshape(()).float()
    zp = float(zero_point.reshape(()).item())
    inv = torch.reciprocal(s)                         # fp32, correctly rounded
    prod = (x.float() * inv).double()                 # the fp32 product, held exactly
    if rounding == "half_even":
        r = torch.round(prod)                         # torch.round rounds half to even
    elif rounding == "half_away":
        r = torch.trunc(prod + torch.copysign(torch.full_like(prod, 0.5), prod))
    else:
        raise ValueError(rounding)
    q = r + zp
    mask = (q >= quant_min) & (q <= quant_max)
    y = (q.clamp(quant_min, quant_max) - zp) * s.double()  # exact in float64
    y = torch.where(torch.isnan(x), x.double(), y)
    return y.float().to(x.dtype), mask


def unpack_mask(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool tensor shaped and strided like `like` from a mask packed in `like`'s memory order."""
    n = like.numel()
    bits = (packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, device=packed.device)) & 1
    flat = bits.reshape(-1)[:n].bool()
    out = torch.empty_like(like, dtype=torch.bool)
    out.as_strided((n,), (1,)).copy_(flat)
    return out


def random_qparams(x: torch.Tensor, quant_min: int, quant_max: int):
    """A scale that clips some of x (so both mask values occur) and a random zero point."""
    amax = x.float().abs().amax().item() if x.numel() else 1.0
    levels = quant_max - quant_min
    scale = max(amax, 1e-3) * 1.6 / max(levels, 1) * float(torch.empty(()).uniform_(0.5, 1.0))
    zp = int(torch.randint(quant_min, quant_max + 1, ()).item())
    return (torch.tensor([scale], dtype=torch.float32, device=x.device),
            torch.tensor([zp], dtype=torch.int32, device=x.device))


def _round(v, rounding):
    if rounding == "half_even":
        return torch.round(v)
    if rounding == "half_away":
        return torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v))
    raise ValueError(rounding)


def fake_quant_per_channel_formula(x, scale, zero_point, axis, quant_min, quant_max, rounding="half_even"):
    """(output, bool mask) of per-channel quant-dequant, written out. Integer zero points:
    q = round(x * fp32(1/scale)) + zp. Float zero points (added before rounding):
    q = round(fp32(x * fp32(1/scale) + zp)) with the product exact and one rounding of the sum
    (a fused multiply-add); y = (clamp(q) - zp) * scale evaluated in float64."""
    shape = [1] * x.dim()
    shape[axis] = -1
    s = scale.float().reshape(shape)
    inv = torch.reciprocal(s)
    if zero_point.is_floating_point():
        z = zero_point.float().reshape(shape).double()
        shifted = (x.float().double() * inv.double() + z).float().double()
        q = _round(shifted, rounding)
    else:
        z = zero_point.reshape(shape).double()
        q = _round((x.float() * inv).double(), rounding) + z
    mask = (q >= quant_min) & (q <= quant_max)
    y = (q.clamp(quant_min, quant_max) - z) * s.double()
    y = torch.where(torch.isnan(x), x.double(), y)
    return y.float().to(x.dtype), mask


def weight_abs_max_formula(w, axis, qmin, qmax, rounding="half_even", eps=FLOAT32_EPS):
    """(output, bool mask, scale) of fake_quant_weight_abs_max, written out in float64: absmax per
    channel (exact), scale = fp32(absmax / half) (the double quotient of two floats rounds to the
    correctly rounded float quotient), max with eps (NaN kept), empty channels -> eps; then the
    per-channel quant-dequant formula with zero points 0."""
    ax = axis % w.dim()
    c = w.shape[ax]
    flat = w.double().abs().movedim(ax, 0).reshape(c, w.numel() // c if c else 0)
    if flat.shape[1] == 0:
        absmax = torch.zeros(c, dtype=torch.float64, device=w.device)
    else:
        absmax = flat.max(dim=1).values
        absmax = torch.where(flat.isnan().any(dim=1), torch.full_like(absmax, math.nan), absmax)
    scale = (absmax / ((qmax - qmin) / 2)).float()
    scale = torch.where(scale < eps, torch.full_like(scale, eps), scale)  # NaN stays NaN
    zeros = torch.zeros(c, dtype=torch.int32, device=w.device)
    y, mask = fake_quant_per_channel_formula(w, scale, zeros, ax, qmin, qmax, rounding)
    return y, mask, scale


def per_group_formula(x, group_size, qmin, qmax, rounding="half_even", eps=None):
    """(output, bool mask, scale) of fake_quant_per_group, written out: groups of group_size along
    the last dim; absmax exact (NaN kept); the quotient absmax / half as a float32 division,
    rounded to x's dtype, floored at eps (default: finfo(x.dtype).smallest_normal; NaN kept),
    float32; then the per-channel quant-dequant formula with the groups as channels."""
    eps = torch.finfo(x.dtype).smallest_normal if eps is None else eps
    groups = x.reshape(-1, group_size)
    absmax = groups.double().abs().amax(dim=1) if groups.shape[0] else torch.zeros(0, dtype=torch.float64)
    absmax = torch.where(groups.isnan().any(dim=1), torch.full_like(absmax, math.nan), absmax)
    quotient = absmax.float() / torch.tensor((qmax - qmin) / 2, dtype=torch.float32, device=x.device)
    scale = quotient.to(x.dtype).float()
    scale = torch.where(scale < eps, torch.full_like(scale, eps), scale)  # NaN stays NaN
    zeros = torch.zeros_like(scale, dtype=torch.int32)
    y, mask = fake_quant_per_channel_formula(groups.contiguous(), scale, zeros, 0, qmin, qmax, rounding)
    return y.reshape(x.shape), mask.reshape(x.shape), scale.reshape(*x.shape[:-1], x.shape[-1] // group_size)


def range_abs_max_update(window, it, scale, cur):
    """Paddle's FindRangeAbsMaxFunctor for one step with the batch's abs-max `cur` (float32
    values; window: a list): the window slot it % size takes cur; the scale grows to cur, or,
    when the value leaving the window was the scale, becomes the window's maximum."""
    f32 = np.float32
    w = len(window)
    idx = it % w
    removed = window[idx]
    window[idx] = cur
    if scale < cur:
        scale = cur
    elif abs(float(f32(removed - scale))) < 1e-6:
        size = min(it, w)
        if size > 0:
            scale = max([f32(0)] + [abs(v) for v in window[:size]])
    return window, it + 1, scale


def random_channel_qparams(x, axis, quant_min, quant_max, float_zero_point=False):
    """Per-channel scales that clip some of each channel and random zero points."""
    c = x.shape[axis]
    amax = x.float().abs().amax().item() if x.numel() else 1.0
    levels = max(quant_max - quant_min, 1)
    scale = (torch.rand(c, device=x.device) * 0.5 + 0.5) * (max(amax, 1e-3) * 1.6 / levels)
    if float_zero_point:
        zp = torch.empty(c, device=x.device).uniform_(quant_min, quant_max)
    else:
        zp = torch.randint(quant_min, quant_max + 1, (c,), dtype=torch.int32, device=x.device)
    return scale.float(), zp


# ---------------------------------------------------------------------------------------
# Observers, written out in numpy float32 / float64 exactly as the reference code they port.

def choose_qparams_reference(mn: float, mx: float, qmin: int, qmax: int, symmetric: bool):
    """ATen's quant_utils::ChooseQuantizationParams (CPU), as torch.fused_moving_avg_obs_fake_quant
    calls it, step by step in float32 (np.float32) and float64 (Python floats)."""
    import numpy as np

    f = np.float32
    mn, mx = f(mn), f(mx)
    if mn < 0 and mx > 0 and symmetric:
        sqmin, sqmax = -((qmax - qmin) // 2 + 1), (qmax - qmin) // 2
        max_scale = float(max(abs(f(mn / f(sqmin))), abs(f(mx / f(sqmax)))))
        mn, mx = f(max_scale * sqmin), f(max_scale * sqmax)
    mn = f(0) if f(0) < mn else mn
    mx = f(0) if mx < f(0) else mx
    scale = (float(mx) - float(mn)) / (qmax - qmin)
    if f(scale) == 0 or np.isinf(f(1) / f(scale)):
        scale = 0.1
    small = float(f(6.1e-5))
    if scale < small:
        org = f(scale)
        scale = small
        if mn == 0:
            mx = f(f(small) * f(qmax - qmin))
        elif mx == 0:
            mn = f(-f(small) * f(qmax - qmin))
        else:
            amp = f(f(small) / org)
            mn, mx = f(mn * amp), f(mx * amp)
    z_min = qmin - float(mn) / scale
    z_max = qmax - float(mx) / scale
    e_min = abs(qmin) - abs(float(mn) / scale)
    e_max = abs(qmax) - abs(float(mx) / scale)
    z = z_min if e_min < e_max else z_max
    if mn < 0 and mx > 0 and symmetric:
        z = (qmin + qmax) / 2
    zp = qmin if z < qmin else qmax if z > qmax else int(np.rint(z))
    return float(f(scale)), zp


def moving_average_reference(running: float, current: float, c: float) -> float:
    """PyTorch's moving-average step in float32: the first observation is taken as is."""
    import numpy as np

    f = np.float32
    if np.isinf(running):
        return float(f(current))
    return float(f(f(running) + f(f(c) * f(f(current) - f(running)))))


# ---------------------------------------------------------------------------------------
# ConvBN (docs/convbn.md), composed from ATen ops, to be read: the three training/eval
# expressions with the weight fake quantization as a straight-through identity.

def _quantize_fold_ste(fold, fold_for_q, quant_min, quant_max, rounding):
    """Q(fold) in value (per-output-channel symmetric abs-max of the float32 tensor
    fold_for_q, written out), gradient = Q's clipped-STE mask times the gradient."""
    f32 = fold_for_q.detach().float()
    amax = f32.abs().amax(dim=(1, 2, 3))
    scale = torch.clamp(amax / ((quant_max - quant_min) / 2), min=torch.finfo(torch.float32).eps)
    q, mask = fake_quant_per_channel_formula(f32, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                                             quant_min, quant_max, rounding)
    mask = mask.to(fold.dtype)
    return fold * mask + (q.to(fold.dtype) - fold * mask).detach(), mask


def _fold_for_q(w, s, weight_dtype):
    # The op folds float32 (and 16-bit) weights in float32: one product with s rounded to
    # float32; float64 weights in float64, rounded to float32 for the quantization.
    if weight_dtype == torch.float64:
        return (w.detach() * s.reshape(-1, 1, 1, 1)).float()
    return w.detach().float() * s.float().reshape(-1, 1, 1, 1)


def conv_bn_reference(x, w, bias, gamma, beta, running_mean, running_var, *, stride=1, padding=0, dilation=1,
                      groups=1, eps=1e-5, momentum=0.1, mode="batch", training=True, relu=False,
                      quantize_weight=True, quant_min=-128, quant_max=127, rounding="half_even", fold_scale=None,
                      weight_dtype=None):
    """(y, new_running_mean, new_running_var) of the ConvBN op in x's dtype arithmetic
    (call with float64 tensors), differentiable in x, w, bias, gamma, beta. fold_scale (if
    given) replaces the reference's own fold scale inside Q only, so that a float32 run can be
    compared with the op's quantised weight; weight_dtype is the op's weight dtype (how it
    rounds the fold), w's own by default."""
    import torch.nn.functional as F

    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    rm, rv = running_mean.clone().to(x.dtype), running_var.clone().to(x.dtype)
    b = bias if bias is not None else torch.zeros_like(gamma)
    shape = (1, -1, 1, 1)

    def Q(fold, s):
        if not quantize_weight:
            return fold, torch.ones_like(fold)
        s_q = fold_scale if fold_scale is not None else s.detach()
        return _quantize_fold_ste(fold, _fold_for_q(w, s_q, weight_dtype or w.dtype), quant_min, quant_max, rounding)

    if not training:
        s = gamma / torch.sqrt(rv + eps)
        wq, _ = Q(w * s.reshape(-1, 1, 1, 1), s)
        y = F.conv2d(x, wq, None, **conv) + (beta + s * (b - rm)).reshape(shape)
    elif mode == "running":
        # torch.ao.nn.intrinsic.qat.ConvBn2d._forward_approximate, with s = 1 where gamma == 0.
        s = torch.where(gamma == 0, torch.ones_like(gamma), gamma / torch.sqrt(rv + eps))
        wq, _ = Q(w * s.reshape(-1, 1, 1, 1), s)
        c = F.conv2d(x, wq, None, **conv) / s.reshape(shape) + b.reshape(shape)
        y = F.batch_norm(c, rm, rv, gamma, beta, training=True, momentum=momentum, eps=eps)
    else:
        # Batch mode: value of the fold with batch statistics, gradient of the unfused graph
        # (training BN on conv(x, W) + bias) with Q's mask on the weight gradient.
        z0 = F.conv2d(x.detach(), w.detach(), None, **conv)
        mu0 = z0.mean(dim=(0, 2, 3))
        var = z0.var(dim=(0, 2, 3), unbiased=False)
        s = gamma.detach() / torch.sqrt(var + eps)
        wq, mask = Q(w.detach() * s.reshape(-1, 1, 1, 1), s)
        w_ste = w * mask + (w - w * mask).detach()
        z = F.conv2d(x, w_ste, bias, **conv)
        unfused = F.batch_norm(z, rm, rv, gamma, beta, training=True, momentum=momentum, eps=eps)
        fused = F.conv2d(x, wq, None, **conv) + (beta - s * mu0).reshape(shape)
        y = unfused + (fused - unfused).detach()
    if relu:
        y = torch.relu(y)
    return y, rm, rv


# ---------------------------------------------------------------------------------------
# Block-scaled formats (fake_quant_block, docs/block-formats.md), written out with torch ops:
# tiles by padding and reshaping, minifloats by frexp, each rule's scale as its reference
# computes it ("in T": the quotient rounded to the input's dtype T).

# (mantissa bits, smallest normal exponent, largest finite value)
MINIFLOATS = {"e4m3": (3, -6, 448.0), "e5m2": (2, -14, 57344.0), "e3m2": (2, -2, 28.0), "e2m3": (3, 0, 7.5),
              "e2m1": (1, 0, 6.0)}
# The exponent of the largest power of two below the largest value: what MX's scale subtracts.
MX_MAX_POW2 = {"e4m3": 8, "e5m2": 15, "e3m2": 4, "e2m3": 2, "e2m1": 2}


def round_minifloat_formula(v: torch.Tensor, fmt: str) -> torch.Tensor:
    """float32 v rounded to the minifloat `fmt`: ties to even, saturating to +-max (inf too),
    NaN kept, signed zeros kept. The grid step at |v| is 2^(max(e, emin) - mbits) with
    e = floor(log2 |v|) (frexp's exponent - 1), so the division by it is exact (float64)."""
    mbits, emin, vmax = MINIFLOATS[fmt]
    d = v.double()
    _, e = torch.frexp(d)
    e = torch.clamp(e - 1, min=emin)
    step = torch.pow(2.0, (e - mbits).double())
    r = torch.round(d / step) * step
    r = torch.where(d.abs() > vmax, torch.copysign(torch.full_like(d, vmax), d), r)
    r = torch.where(r.abs() > vmax, torch.copysign(torch.full_like(d, vmax), d), r)
    return torch.where(torch.isnan(d), d, r).float()


def _tiles(x2, br, bc, pad):
    """[rows, cols] -> [grid_rows, br, grid_cols, bc], the edge tiles padded with `pad`."""
    rows, cols = x2.shape
    gr, gc = -(-rows // br), -(-cols // bc)
    p = torch.full((gr * br, gc * bc), pad, dtype=x2.dtype, device=x2.device)
    p[:rows, :cols] = x2
    return p.view(gr, br, gc, bc)


def _per_element(t, br, bc, rows, cols):
    """A [grid_rows, grid_cols] tensor broadcast to each tile's elements: [rows, cols]."""
    return t.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]


def _amax(x2, br, bc):
    t = _tiles(x2.float().abs(), br, bc, 0.0)
    return t.amax(dim=(1, 3)) if t.numel() else torch.zeros(t.shape[0], t.shape[2], device=x2.device)


def _to_int32(v):
    # torch's CPU float -> int32 cast on x86: NaN and out-of-range give INT32_MIN.
    bad = torch.isnan(v) | (v >= 2.0**31) | (v < -(2.0**31))
    return torch.where(bad, torch.full_like(v, -(2.0**31)), torch.trunc(v)).to(torch.int32)


def _rt(v, dtype):
    """float32 v rounded to dtype and back."""
    return v.to(dtype).float()


def block_formula(x, format, scale_rule, block_rows=1, block_cols=32, quant_min=-128, quant_max=127, eps=None,
                  amax_lower=None, amax_upper=None, tensor_scale=False, rounding="half_even", seed=None):
    """(output, bool mask, scale, zero_point, tensor_amax) of fake_quant_block, written out
    (None for stochastic rounding: Philox, test_stochastic_rounding.py's business)."""
    if rounding == "stochastic":
        return None
    T = x.dtype
    shape = x.shape
    rows, cols = math.prod(shape[:-1]), shape[-1]
    x2 = x.reshape(rows, cols)
    xf = x2.float()
    br, bc = block_rows, block_cols
    dev = x.device
    grid = (-(-rows // br), -(-cols // bc))
    per = lambda t: _per_element(t, br, bc, rows, cols)  # noqa: E731
    rnd = torch.round if rounding == "half_even" else (
        lambda v: torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v)))
    whole = scale_rule not in ("int_affine", "int_affine_float_zp") and br >= rows and bc >= cols
    amax_all = xf.abs().amax() if x.numel() else torch.zeros((), device=dev)
    needs_amax = whole or (scale_rule.startswith("nvfp4") and tensor_scale)
    tensor_amax = amax_all.reshape(()) if needs_amax else torch.empty(0, device=dev)
    zero_point = torch.empty(0, dtype=torch.int32, device=dev)
    amax = _amax(x2, br, bc)
    if whole:
        amax = torch.full(grid, float(amax_all), device=dev)

    if scale_rule in ("int_affine", "int_affine_float_zp"):
        lo = _tiles(xf, br, bc, math.inf).amin(dim=(1, 3)) if x.numel() else torch.zeros(grid, device=dev)
        hi = _tiles(xf, br, bc, -math.inf).amax(dim=(1, 3)) if x.numel() else torch.zeros(grid, device=dev)
        levels = quant_max - quant_min
        if scale_rule == "int_affine":
            lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # NaN kept
            e = torch.finfo(T).smallest_normal if eps is None else eps
        else:
            e = 1e-6 if eps is None else eps
        scale = _rt(_rt(hi - lo, T) / levels, T)
        scale = torch.where(scale < e, torch.full_like(scale, _rt(torch.tensor(e), T).item()), scale)
        if scale_rule == "int_affine":
            zp = torch.clamp(quant_min - torch.round(_rt(lo / scale, T)), quant_min, quant_max)
        else:
            zp = _rt(lo + _rt(scale * ((levels + 1) / 2), T), T)
        zero_point = _to_int32(zp)
        zpf = per(zero_point.float())
        r = torch.round(xf * per(1.0 / scale)) + zpf
        mask = (r >= quant_min) & (r <= quant_max)
        q = torch.where(torch.isnan(r), r, r.clamp(quant_min, quant_max))
        y = (_rt(_rt(q, T) - _rt(zpf, T), T) * per(scale))
    elif scale_rule == "int_modelopt":
        zero = amax <= 2.0**-24
        scale = torch.where(zero, torch.ones_like(amax), torch.full_like(amax, quant_max) / amax)
        qscale = torch.where(zero, torch.zeros_like(amax), scale)
        r = rnd(xf * per(qscale))
        mask = (r >= quant_min) & (r <= quant_max)
        y = torch.where(torch.isnan(r), r, r.clamp(quant_min, quant_max)) / per(scale)
    elif scale_rule == "fp8_torchao":
        vmax = MINIFLOATS[format][2]
        clamped = amax.clamp(min=amax_lower, max=amax_upper) if (amax_lower, amax_upper) != (None, None) else amax
        scale = _rt(_rt(clamped, T) / vmax, T)
        v = xf / per(scale)
        mask = v.abs() <= vmax
        y = round_minifloat_formula(v, format) * per(scale)
    elif scale_rule == "fp8_modelopt":
        vmax = MINIFLOATS[format][2]
        # ModelOpt's `448.0 / amax`: torch's reciprocal, then the product.
        scale = torch.reciprocal(torch.where(amax <= 2.0**-24, torch.ones_like(amax), amax)) * vmax
        v = xf * per(scale)
        mask = v.abs() <= vmax
        y = round_minifloat_formula(v, format) * per(1.0 / scale)
    elif scale_rule.startswith("mx_"):
        mbits, _, vmax = MINIFLOATS[format]
        mode = scale_rule[3:]
        nan = torch.isnan(amax)
        if mode == "rceil":
            descale = amax / vmax
            log2 = torch.log2(descale.double()).float()  # correctly rounded float32 log2
            biased = torch.clamp(torch.ceil(log2), -127, 127) + 127
            biased = torch.where(torch.isinf(descale), torch.full_like(biased, 254), biased)
            rcp = torch.where(biased == 254, torch.full_like(biased, 2.0**-127),
                              torch.where(biased == 0, torch.ones_like(biased),
                                          torch.pow(2.0, (127 - biased).double()).float()))
            v = xf * per(torch.where(nan, amax, rcp))
        else:
            bits = amax.view(torch.int32)
            if mode == "even":
                bits = (bits + (1 << (23 - mbits - 1))) & 0x7F800000
            pow2 = ((bits >> 23) & 0xFF) - 127
            if mode == "ceil":
                pow2 = pow2 + ((bits & 0x7FFFFF) > 0).int()
            biased = (torch.clamp(pow2 - MX_MAX_POW2[format], -127, 128) + 127).float()
            divisor = (biased.int() << 23).view(torch.float32).clamp(min=2.0**-126)
            v = xf / per(divisor)
        biased = torch.where(nan, torch.full_like(biased, 255), biased)
        scale = torch.where(biased == 255, torch.full_like(amax, math.nan),
                            torch.pow(2.0, biased.double() - 127).float())
        mask = v.abs() <= vmax
        y = round_minifloat_formula(v, format) * per(scale)
    elif scale_rule == "nvfp4_torchao":
        e4 = lambda v: round_minifloat_formula(v.clamp(2.0**-6, 448.0), "e4m3")  # noqa: E731  (NaN kept)
        if tensor_scale:
            ts = amax_all / 2688.0
            scale = e4(amax / 6.0 / ts)
            inv, out = (1.0 / ts) / scale, ts * scale
        else:
            scale = e4(amax / 6.0)
            inv, out = 1.0 / scale, scale
        v = xf * per(inv)
        mask = v.abs() <= 6.0
        y = round_minifloat_formula(v, "e2m1") * per(out)
    elif scale_rule == "nvfp4_modelopt":
        ts = amax_all / 2688.0 if tensor_scale else torch.ones((), device=dev)
        ts_safe = torch.where(ts > 0, ts, torch.full_like(ts, 1e-12))
        scale = round_minifloat_formula(amax / (6.0 * ts_safe), "e4m3")
        factor = scale * ts
        factor = torch.where(factor < 1e-5, torch.ones_like(factor), factor)
        v = xf / per(factor)
        mask = v.abs() <= 6.0
        y = round_minifloat_formula(v, "e2m1") * per(factor)
    else:
        raise ValueError(scale_rule)
    if rounding != "half_even" and format != "int":
        return None  # the minifloat formula above rounds half to even only
    return (y.to(T).reshape(shape), mask.reshape(shape), scale.float().reshape(grid), zero_point.reshape(
        grid if scale_rule in ("int_affine", "int_affine_float_zp") else (0,)), tensor_amax.float())
