"""Independent references for the tests: the numerics contract (docs/numerics.md) written
out with plain torch ops in float64, and helpers to read the packed mask."""

from __future__ import annotations

import torch


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
