// Stochastic rounding: Philox4x32-10 counter-based random words and floor(v + u).
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/rounding.h"

namespace fakequant {

// Stochastic rounding (docs/numerics.md, "Stochastic rounding").
//
// Randomness is counter-based: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011; the Random123 reference), so that any element's random word
// follows from its memory offset and the seed alone - the same on every backend, whatever
// the thread split.

struct Philox4x32 {
  uint32_t v[4];
};

FQ_HD uint32_t mul_hi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

constexpr int kPhiloxRounds = 10;

// The key of round r (0-based): the Weyl sequence k + r * W, mod 2^32.
FQ_HD uint32_t philox_round_key0(uint32_t k0, int round) { return k0 + static_cast<uint32_t>(round) * 0x9E3779B9u; }
FQ_HD uint32_t philox_round_key1(uint32_t k1, int round) { return k1 + static_cast<uint32_t>(round) * 0xBB67AE85u; }

// One Philox4x32 round with the round's key (rk0, rk1).
FQ_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t rk0, uint32_t rk1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  const uint32_t hi0 = mul_hi32(kM0, c0), lo0 = kM0 * c0;
  const uint32_t hi1 = mul_hi32(kM1, c2), lo1 = kM1 * c2;
  const uint32_t n0 = hi1 ^ c1 ^ rk0, n2 = hi0 ^ c3 ^ rk1;
  c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
}

// Philox4x32 with 10 rounds: counter (c0, c1, c2, c3), key (k0, k1).
FQ_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox_round(c0, c1, c2, c3, philox_round_key0(k0, round), philox_round_key1(k1, round));
  }
  return {{c0, c1, c2, c3}};
}

// The 4 random words of elements [4 * quad, 4 * quad + 4) for a seed (key, offset): Philox
// with key (lo32(key), hi32(key)) and counter (lo32(quad), hi32(quad), lo32(offset),
// hi32(offset)); element i takes word i % 4 of quad i / 4.
FQ_HD Philox4x32 stochastic_words(uint64_t quad, uint64_t key, uint64_t offset) {
  return philox4x32_10(static_cast<uint32_t>(quad), static_cast<uint32_t>(quad >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// floor(a) for a >= 0 (inf and NaN pass through); exact. The host version avoids libm as
// round_half_even does: round to nearest, then step down where that went up.
FQ_HD float floor_nonnegative(float a) {
#if defined(__CUDA_ARCH__)
  return floorf(a);
#else
  const float r = (a + 8388608.0f) - 8388608.0f;
  const float f = r > a ? r - 1.0f : r;
  return a < 8388608.0f ? f : a;
#endif
}

// floor(v + u) in exact (real) arithmetic, with u = (random >> 8) * 2^-24 in [0, 1): the
// fp32 sum v + u is never formed (it could round across an integer). With a = |v|,
// t = a - floor(a) (exact) and k = random >> 8:
//   v >= 0: floor(v + u) = floor(a) + 1   iff t + u >= 1  iff t >= (2^24 - k) * 2^-24
//   v <  0: floor(v + u) = -(floor(a) + 1) iff u < t      iff t >  k * 2^-24
// and otherwise +-floor(a). Both thresholds are exact in fp32. Integers (t = 0) never
// move, +-inf stays +-inf (t is NaN, every comparison false) and NaN stays NaN; a zero
// result keeps v's sign, as rint's does.
FQ_HD float round_stochastic(float v, uint32_t random) {
  const float u = static_cast<float>(random >> 8) * 5.9604644775390625e-8f;  // k * 2^-24, exact
  const bool negative = v < 0.0f;
#if defined(__CUDA_ARCH__)
  const float a = fabsf(v);
#else
  const float a = std::fabs(v);
#endif
  const float whole = floor_nonnegative(a);
  const float t = a - whole;
  const bool up = negative ? (t > u) : (t >= 1.0f - u);
  const float magnitude = whole + (up ? 1.0f : 0.0f);
  return negative ? -magnitude : magnitude;
}

// `random` is only read by Rounding::kStochastic.
FQ_HD float round_with(float v, Rounding mode, uint32_t random = 0) {
  if (mode == Rounding::kStochastic) return round_stochastic(v, random);
  return mode == Rounding::kHalfAway ? round_half_away(v) : round_half_even(v);
}

}  // namespace fakequant
