// Block-scaled formats: low-precision float elements (FP8 E4M3 / E5M2, FP6 E3M2 / E2M3,
// FP4 E2M1), E8M0 (MX) and E4M3 (NVFP4) block scales, and the scale rules of each reference
// (torchao, ModelOpt) written as scalar functions.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md
// and the references' formulas are in docs/block-formats.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/float16.h"
#include "fakequant/math/rounding.h"
#include "fakequant/math/philox.h"

namespace fakequant {

// The element formats. kInt is an integer grid [quant_min, quant_max]; the others are the
// OCP / NVIDIA minifloats, all without infinities in the saturating casts used here.
enum class BlockFormat : int32_t { kInt = 0, kE4M3 = 1, kE5M2 = 2, kE3M2 = 3, kE2M3 = 4, kE2M1 = 5 };

// A minifloat: `mbits` mantissa bits, smallest normal exponent `emin` (1 - bias), largest
// finite value `max`, and the exponent of the largest power of two below it (`max_pow2`,
// what the MX scale rules subtract).
struct MiniFloat {
  int32_t mbits;
  int32_t emin;
  float max;
  int32_t max_pow2;
};

FQ_HD MiniFloat minifloat_of(BlockFormat f) {
  switch (f) {
    case BlockFormat::kE4M3:
      return {3, -6, 448.0f, 8};
    case BlockFormat::kE5M2:
      return {2, -14, 57344.0f, 15};
    case BlockFormat::kE3M2:
      return {2, -2, 28.0f, 4};
    case BlockFormat::kE2M3:
      return {3, 0, 7.5f, 2};
    case BlockFormat::kE2M1:
      return {1, 0, 6.0f, 2};
    case BlockFormat::kInt:
      break;
  }
  return {0, 0, 0.0f, 0};
}

// 2^e as a float32 for -126 <= e <= 127, from its bits (exact, no libm).
FQ_HD float pow2_normal(int32_t e) { return bits_float(static_cast<uint32_t>(e + 127) << 23); }

// v rounded to the minifloat `f`: the nearest value on its grid (ties to even with kHalfEven,
// away from zero with kHalfAway, floor(v / quantum + u) with kStochastic), saturating to
// +-max (inf too), NaN kept, the sign of a zero kept. The grid step at |v| is
// 2^(max(e, emin) - mbits) with e = floor(log2 |v|), so v / step and the rounded level times
// step are exact power-of-two scalings, and one rounding happens, as in a correctly rounded
// saturating cast (torch's float32 -> float8 casts after a clamp, torchao's FP6/FP4 casts).
FQ_HD float round_minifloat(float v, const MiniFloat& f, Rounding mode, uint32_t random = 0) {
  const float a = v < 0.0f ? -v : v;
  if (!(a <= f.max)) return is_nan(v) ? v : (v < 0.0f ? -f.max : f.max);
  int32_t e = static_cast<int32_t>((float_bits(a) >> 23) & 0xFFu) - 127;
  e = e < f.emin ? f.emin : e;
  const float level = round_with(v * pow2_normal(f.mbits - e), mode, random);
  return level * pow2_normal(e - f.mbits);
}

// --- MX (OCP microscaling): E8M0 block scales, torchao's to_mx -----------------------------

enum class MxScaleMode : int32_t { kFloor = 0, kCeil = 1, kEven = 2, kRceil = 3 };

// The biased E8M0 exponent (0..255, 255 = NaN) of a block whose abs-max is `max_abs` (>= 0 or
// NaN), as torchao's to_mx computes it (docs/block-formats.md):
//   FLOOR: floor(log2 max_abs) - max_pow2, read from the float32 exponent bits;
//   EVEN:  the same after rounding max_abs half up to the element's mantissa width;
//   CEIL:  FLOOR's exponent plus one when max_abs is not a power of two;
//   then clamped to [-127, 128] and biased by 127; a NaN abs-max gives 255.
//   RCEIL: descale = max_abs / max; 255 for NaN, 254 for inf, else
//          clamp(ceil(log2f(descale)), -127, 127) + 127, where log2f is the float32 log2
//          (computed in double and rounded to float32: correctly rounded, as a float32 log2
//          within its last-place error is on these arguments).
FQ_HD uint32_t mx_scale_exponent(float max_abs, const MiniFloat& f, MxScaleMode mode) {
  if (is_nan(max_abs)) return 255u;
  if (mode == MxScaleMode::kRceil) {
    const float descale = max_abs / f.max;
    if (descale > 3.40282347e+38f) return 254u;
    // log2 of 0 is -inf: clamped to -127 below.
    const float l = static_cast<float>(log2(static_cast<double>(descale)));
    float c = ceilf(l);
    c = c < -127.0f ? -127.0f : (c > 127.0f ? 127.0f : c);
    return static_cast<uint32_t>(static_cast<int32_t>(c) + 127);
  }
  uint32_t bits = float_bits(max_abs);
  if (mode == MxScaleMode::kEven) bits = (bits + (1u << (23 - f.mbits - 1))) & 0xFF800000u;
  int32_t pow2 = static_cast<int32_t>((bits >> 23) & 0xFFu) - 127;
  if (mode == MxScaleMode::kCeil && (bits & 0x7FFFFFu) != 0) pow2 += 1;
  int32_t unbiased = pow2 - f.max_pow2;
  unbiased = unbiased < -127 ? -127 : (unbiased > 128 ? 128 : unbiased);
  return static_cast<uint32_t>(unbiased + 127);
}

// The E8M0 value 2^(exponent - 127) as a float32 (2^-127 is a float32 subnormal; 255 is NaN):
// the scale the dequantisation multiplies by.
FQ_HD float e8m0_value(uint32_t exponent) {
  if (exponent == 255u) return bits_float(0x7FC00000u);
  if (exponent == 0u) return bits_float(0x00400000u);  // 2^-127
  return bits_float(exponent << 23);
}

// --- the per-block transform ---------------------------------------------------------------

// A float32 converted to int32 the way torch's CPU cast (x86 cvttss2si) does it: truncated
// toward zero; NaN and values outside the int32 range give INT32_MIN. torchao turns its
// zero points into int32 tensors with that cast, and the quant-dequant then adds the int32 value.
FQ_HD int32_t trunc_to_int32(float v) {
  // -2^31 is a float; the next float below it is -2^31 - 256.
  if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;
  return static_cast<int32_t>(v);
}

// v rounded to a storage type given as a DType value (fakequant/fake_quant.h: 0 float32,
// 1 float16, 2 bfloat16), back in float32.
FQ_HD float round_to_storage(float v, int32_t dtype) {
  if (dtype == 1) return load_acc(from_float<Half>(v));
  if (dtype == 2) return load_acc(from_float<BFloat16>(v));
  return v;
}

// What one block's statistics turn into: the elements are scaled (multiplied by `in_factor`,
// or divided by it when `in_divide`), rounded to the format, and scaled back (multiplied by
// `out_factor`, or divided when `out_divide`). `scale` is the value reported per block.
// Integer formats of the affine rules (`affine`) add `zero_point` (an int32 value) after
// rounding and subtract it before scaling back, in the input's dtype `affine_dtype` (a DType
// value) as torchao does: T(T(q) - T(zero_point)). The zero point is added even when it is 0,
// which turns a rounded -0 into +0, as torchao's int32 addition does; without `affine`
// (ModelOpt) a rounded -0 stays -0.
struct BlockTransform {
  float in_factor = 1.0f;
  float out_factor = 1.0f;
  bool in_divide = false;
  bool out_divide = false;
  bool affine = false;
  int32_t affine_dtype = 0;
  float zero_point = 0.0f;
  float scale = 1.0f;
};

struct BlockElementResult {
  float value;
  bool in_range;  // the clipped-STE mask bit: the scaled value was inside the format's range
};

// One element of a block: integer formats clamp round(x * in) (+ zero_point) to
// [quant_min, quant_max]; minifloats saturate to +-max. in_range is false for NaN.
FQ_HD BlockElementResult block_element(float x, const BlockTransform& t, BlockFormat format, const MiniFloat& mf,
                                       float quant_min, float quant_max, Rounding mode, uint32_t random) {
  const float v = t.in_divide ? x / t.in_factor : mul_rn(x, t.in_factor);
  float q;
  bool in_range;
  if (format == BlockFormat::kInt) {
    float r = round_with(v, mode, random);
    if (t.affine) r = r + t.zero_point;
    in_range = (r >= quant_min) & (r <= quant_max);
    q = r < quant_min ? quant_min : r;
    q = q > quant_max ? quant_max : q;
    q = is_nan(r) ? r : q;
    if (t.affine) {
      const int32_t d = t.affine_dtype;
      q = round_to_storage(round_to_storage(q, d) - round_to_storage(t.zero_point, d), d);
    }
  } else {
    const float a = v < 0.0f ? -v : v;
    in_range = a <= mf.max;
    q = round_minifloat(v, mf, mode, random);
  }
  const float y = t.out_divide ? q / t.out_factor : mul_rn(q, t.out_factor);
  return {y, in_range};
}

}  // namespace fakequant
