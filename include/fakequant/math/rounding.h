// Rounding to an integer level: half-even, half-away, and separately rounded products.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/float16.h"

namespace fakequant {

// Rounding.

enum class Rounding : int32_t {
  kHalfEven = 0,    // round half to even (PyTorch's std::nearbyint / rint)
  kHalfAway = 1,    // round half away from zero (Paddle round_type=1, std::round)
  kStochastic = 2,  // floor(v + u), u uniform in [0, 1) from Philox4x32-10 (below)
};

// Round to nearest, ties to even. On the host this avoids a libm call per element (which
// blocks vectorisation) with the 2^23 trick: for |v| < 2^23, |v| + 2^23 lies in
// [2^23, 2^24) where the float spacing is exactly 1, so the addition itself rounds to
// the nearest integer with ties to even, and subtracting 2^23 is exact. |v| >= 2^23 is
// already an integer (or inf/NaN) and is returned unchanged. Written branch-free (selects
// and copysign) so that random signs cost no mispredictions and loops vectorise.
FQ_HD float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  const float a = std::fabs(v);
  const float r = std::copysign((a + 8388608.0f) - 8388608.0f, v);
  return a < 8388608.0f ? r : v;
#endif
}

// Round to nearest, ties away from zero (std::round), without a libm call: round |v| to
// nearest-even as above, then move the ties that went down (|v| - r == 0.5, an exact
// subtraction by Sterbenz's lemma) one up.
FQ_HD float round_half_away(float v) {
#if defined(__CUDA_ARCH__)
  return roundf(v);
#else
  const float a = std::fabs(v);
  float r = (a + 8388608.0f) - 8388608.0f;
  r += (a - r == 0.5f) ? 1.0f : 0.0f;
  return a < 8388608.0f ? std::copysign(r, v) : v;
#endif
}

// The fp32 product a * b, rounded once and never contracted into a later add (nvcc
// contracts by default; the host build uses -ffp-contract=off).
FQ_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace fakequant
