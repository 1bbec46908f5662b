// Affine quant-dequant of one value, integer and float zero points.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/philox.h"

namespace fakequant {

// Affine quant-dequant of one value (docs/numerics.md).
//
//   q    = round(x * inv_scale) + zero_point          (float; integer zero point added
//                                                       after rounding, as ATen does)
//   y    = (clamp(q, quant_min, quant_max) - zero_point) * scale
//   mask = quant_min <= q <= quant_max                  (the clipped-STE gradient mask)
//
// Non-finite inputs: NaN -> NaN with mask 0; +-inf -> the range end with mask 0 (this
// falls out of the float clamp). All arithmetic is float and every integer involved is
// below 2^17 in magnitude, so the clamp bounds and (q - zero_point) are exact.
struct QuantDequantResult {
  float value;
  bool in_range;
};

FQ_HD QuantDequantResult quant_dequant(float x, float scale, float inv_scale, float zero_point,
                                       float quant_min, float quant_max, Rounding mode,
                                       uint32_t random = 0) {
  const float q = round_with(mul_rn(x, inv_scale), mode, random) + zero_point;
  const bool in_range = (q >= quant_min) & (q <= quant_max);  // false for NaN and +-inf
  float clamped = q < quant_min ? quant_min : q;
  clamped = clamped > quant_max ? quant_max : clamped;
  const float y = (clamped - zero_point) * scale;
  return {is_nan(x) ? x : y, in_range};
}

// Float zero point (ATen's per-channel path when zero_point is a float tensor, as learnable
// qparams use): the zero point is added before rounding, q = round(fma(x, inv_scale,
// zero_point)) - one fused multiply-add, as ATen's x86 (AVX2) and CUDA builds compile
// `zero_point + x * inv_scale` - and the dequantised value (clamp(q) - zero_point) * scale is
// evaluated in double and rounded once, as ATen's CPU kernel does (ATen's CUDA kernel rounds
// it in float; docs/numerics.md).
FQ_HD QuantDequantResult quant_dequant_float_zp(float x, float scale, float inv_scale, float zero_point,
                                                float quant_min, float quant_max, Rounding mode,
                                                uint32_t random = 0) {
#if defined(__CUDA_ARCH__)
  const float shifted = __fmaf_rn(x, inv_scale, zero_point);
#else
  const float shifted = std::fma(x, inv_scale, zero_point);
#endif
  const float q = round_with(shifted, mode, random);
  const bool in_range = (q >= quant_min) & (q <= quant_max);
  float clamped = q < quant_min ? quant_min : q;
  clamped = clamped > quant_max ? quant_max : clamped;
  // ATen rounds to an integer type, which has no -0: a -0 level (a small negative x with a
  // zero point of +0) is +0 there. Adding +0 turns -0 into +0 and leaves everything else.
  clamped = clamped + 0.0f;
  const double y = (static_cast<double>(clamped) - static_cast<double>(zero_point)) * static_cast<double>(scale);
  return {is_nan(x) ? x : static_cast<float>(y), in_range};
}

}  // namespace fakequant
