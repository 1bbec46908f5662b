// Symmetric scales from an abs-max, the forward reciprocal, abs-max bits.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/quant_dequant.h"

namespace fakequant {

// Symmetric scales from an abs-max (zero point 0), as PyTorch's symmetric observers compute
// them (PerChannelMinMaxObserver with per_channel_symmetric, docs/numerics.md):
//
//   scale = max(absmax / ((quant_max - quant_min) / 2), eps)     in fp32
//
// The half range is exact in fp32 (an integer below 2^17, halved); the division is the
// correctly rounded fp32 quotient (ATen's CPU division; `/` is IEEE division on the GPU too).
// A NaN abs-max gives a NaN scale: the comparison is false and NaN passes through, as
// torch.max(scale, eps) propagates it.
FQ_HD float symmetric_half_range(int32_t quant_min, int32_t quant_max) {
  return static_cast<float>(quant_max - quant_min) * 0.5f;
}

FQ_HD float floor_at_eps(float scale, float eps) { return scale < eps ? eps : scale; }

FQ_HD float symmetric_scale(float absmax, float half_range, float eps) {
  return floor_at_eps(absmax / half_range, eps);
}

// The bits of |v|. As unsigned integers they order like the magnitudes, with every NaN above
// +inf, so an integer max over them is an abs-max that propagates NaN (as torch.amax does),
// exact and independent of the reduction order.
FQ_HD uint32_t abs_bits(float v) { return float_bits(v) & 0x7FFFFFFFu; }

// The reciprocal the forward pass multiplies by: 1.0f / scale in fp32, correctly rounded,
// as ATen computes it. Kept in one place so CPU and CUDA cannot drift.
FQ_HD float inverse_scale(float scale) { return 1.0f / scale; }

}  // namespace fakequant
