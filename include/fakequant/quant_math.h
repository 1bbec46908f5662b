// The one definition of fakequant's scalar quantization math.
//
// Every function here is `__host__ __device__` (FQ_HD) and is used unchanged by the
// CPU reference (kernels/cpu) and the CUDA kernels (kernels/cuda), so the two paths can
// only differ in launch logic and reduction order. The contract is docs/numerics.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define FQ_HD __host__ __device__ __forceinline__
#else
#define FQ_HD inline
#endif

namespace fakequant {

// ---------------------------------------------------------------------------
// Storage types for 16-bit floats. The kernels see tensors as raw pointers, so the
// library defines its own 2-byte types (layout-compatible with c10::Half,
// c10::BFloat16, __half and __nv_bfloat16) and converts with round-to-nearest-even,
// exactly as PyTorch does.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types");

FQ_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

FQ_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

FQ_HD bool is_nan(float v) { return v != v; }

FQ_HD float to_float(float v) { return v; }

FQ_HD float to_float(BFloat16 v) { return bits_float(static_cast<uint32_t>(v.bits) << 16); }

// Host versions of the binary16 conversions are written out so that the CPU build needs no
// CUDA headers; the GPU uses the hardware conversions, which give the same values
// (round-to-nearest-even, overflow to inf, NaN stays NaN).
FQ_HD float half_bits_to_float(uint16_t h16) {
  const uint32_t h = h16;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_float(sign | 0x7F800000u | (man << 13));  // inf / NaN
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

// Every NaN becomes the canonical 0x7FFF (fp16 and bf16 alike), which is what the GPU's
// cvt.rn instructions and the CUDA headers' host conversions store: the NaN bits of a 16-bit
// output are then the same on every backend (docs/numerics.md, "16-bit floats").
constexpr uint16_t kCanonicalNaN16 = 0x7FFFu;

FQ_HD uint16_t float_to_half_bits(float v) {
  const uint32_t u = float_bits(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return kCanonicalNaN16;
  if (abs == 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u);  // inf
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Subnormal (or zero) result: round |v| * 2^24 to an integer, nearest-even; adding and
    // subtracting 2^23 does exactly that for values below 2^23.
    const float scaled = bits_float(abs) * 16777216.0f;  // exact (power of two)
    const float rounded = (scaled + 8388608.0f) - 8388608.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded));
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest-even.
  const uint32_t mant_odd = (abs >> 13) & 1u;
  const uint32_t rounded = abs + 0xFFFu + mant_odd;
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

FQ_HD uint16_t float_to_bfloat16_bits(float v) {
  const uint32_t u = float_bits(v);
  if (v != v) return kCanonicalNaN16;
  const uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);      // nearest-even
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

FQ_HD float to_float(Half v) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(v.bits));
#else
  return half_bits_to_float(v.bits);
#endif
}

template <typename T>
FQ_HD T from_float(float v);

template <>
FQ_HD float from_float<float>(float v) {
  return v;
}

template <>
FQ_HD BFloat16 from_float<BFloat16>(float v) {
#if defined(__CUDA_ARCH__)
  return BFloat16{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
#else
  return BFloat16{float_to_bfloat16_bits(v)};
#endif
}

template <>
FQ_HD Half from_float<Half>(float v) {
#if defined(__CUDA_ARCH__)
  return Half{__half_as_ushort(__float2half_rn(v))};
#else
  return Half{float_to_half_bits(v)};
#endif
}

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
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

FQ_HD float symmetric_scale(float absmax, float half_range, float eps) {
  const float s = absmax / half_range;
  return s < eps ? eps : s;
}

// The bits of |v|. As unsigned integers they order like the magnitudes, with every NaN above
// +inf, so an integer max over them is an abs-max that propagates NaN (as torch.amax does),
// exact and independent of the reduction order.
FQ_HD uint32_t abs_bits(float v) { return float_bits(v) & 0x7FFFFFFFu; }

// The reciprocal the forward pass multiplies by: 1.0f / scale in fp32, correctly rounded,
// as ATen computes it. Kept in one place so CPU and CUDA cannot drift.
FQ_HD float inverse_scale(float scale) { return 1.0f / scale; }

// ---------------------------------------------------------------------------
// Reductions and observers (docs/numerics.md, "Observers").

// NaN-propagating max / min, as torch.amax / torch.aminmax: a NaN on either side wins.
FQ_HD float nan_max(float a, float b) { return (a > b || is_nan(a)) ? a : b; }
FQ_HD float nan_min(float a, float b) { return (a < b || is_nan(a)) ? a : b; }

FQ_HD bool is_inf(float v) { return (float_bits(v) & 0x7FFFFFFFu) == 0x7F800000u; }

// A separately rounded sum (with mul_rn above): on the GPU nvcc would otherwise contract
// a*b+c into an FMA, while the CPU reference (and ATen's CPU code) rounds the product first.
FQ_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

constexpr float kSmallestNormal = 1.17549435e-38f;

// PyTorch's moving-average observer step (MovingAverageMinMaxObserver and ATen's fused
// op): the first observation (running value still +-inf) is taken as is, later ones move
// the running value by c * (current - running), rounded step by step in fp32.
FQ_HD float moving_average_min_max(float running, float current, float averaging_const) {
  return is_inf(running) ? current : add_rn(running, mul_rn(averaging_const, current - running));
}

// False for NaN and +-inf.
FQ_HD bool is_finite(float v) { return v - v == 0.0f; }

// Observers and non-finite statistics (docs/numerics.md, "Non-finite statistics"): an update
// whose batch statistic or result is not finite (a NaN or inf in the batch, or an overflow of
// the running value) is not applied - the state keeps its last finite values, so one bad batch
// cannot make a quantizer unusable - and the quant-dequant of that call is poisoned (NaN
// output, mask 0), so the bad batch is seen rather than hidden.

// One channel of the moving-average min/max observer: both running values move, or (false
// returned) neither does.
FQ_HD bool moving_average_min_max_step(float* running_min, float* running_max, float current_min, float current_max,
                                       float averaging_const) {
  const float next_min = moving_average_min_max(*running_min, current_min, averaging_const);
  const float next_max = moving_average_min_max(*running_max, current_max, averaging_const);
  if (!(is_finite(current_min) && is_finite(current_max) && is_finite(next_min) && is_finite(next_max))) return false;
  *running_min = next_min;
  *running_max = next_max;
  return true;
}

// PaddlePaddle's moving_average_abs_max update (fake_quantize_moving_average_abs_max):
//   state = r * state + 1;  accum = r * accum + abs_max;  scale = accum / state
struct MovingAverageAbsMaxUpdate {
  float state, accum, scale;
};
FQ_HD MovingAverageAbsMaxUpdate moving_average_abs_max(float state, float accum, float abs_max, float rate) {
  MovingAverageAbsMaxUpdate u;
  u.state = add_rn(mul_rn(rate, state), 1.0f);
  u.accum = add_rn(mul_rn(rate, accum), abs_max);
  u.scale = u.accum / u.state;
  return u;
}

// Whether the update above is applied (the non-finite rule: the batch's abs-max and the new
// state all finite).
FQ_HD bool moving_average_abs_max_accepted(float abs_max, const MovingAverageAbsMaxUpdate& u) {
  return is_finite(abs_max) && is_finite(u.state) && is_finite(u.accum) && is_finite(u.scale);
}

// Paddle's abs-max scales are the range end (|x| <= scale maps to [-bin_cnt, bin_cnt],
// bin_cnt = 2^(bits-1) - 1); the quant-dequant step of our contract is scale / bin_cnt.
// A zero scale (an all-zero tensor) would make the step 0 and 1/step infinite: such a step
// is raised to the smallest normal float, so zeros stay zeros and anything else saturates.
// Negative or non-finite scales are left as they are (out of contract: poisoned output).
FQ_HD float abs_max_step(float scale, int32_t bin_cnt) {
  const float step = scale / static_cast<float>(bin_cnt);
  return (step >= 0.0f && step < kSmallestNormal) ? kSmallestNormal : step;
}

// Paddle's range_abs_max test for "the maximum has just left the window": the evicted value
// equals the current scale to within 1e-6 (compared in double, as Paddle does).
FQ_HD bool range_abs_max_left_window(float removed, float scale) {
  return static_cast<double>(fabsf(removed - scale)) < 1e-6;
}

FQ_HD int32_t abs_max_bin_cnt(int32_t bits) { return (1 << (bits - 1)) - 1; }

// range_abs_max's step counter after `iter` (>= 0): iter + 1, without overflowing at
// INT64_MAX. From window_size steps on only iter % window_size (the slot) and
// min(iter, window_size) = window_size are read, so the counter then continues as
// window_size + (iter + 1) % window_size: the same slots in the same order.
FQ_HD int64_t range_abs_max_next_iter(int64_t iter, int64_t window_size) {
  constexpr int64_t kMaxIter = 0x7FFFFFFFFFFFFFFF;
  return iter < kMaxIter ? iter + 1 : window_size + (iter % window_size + 1) % window_size;
}

// PyTorch's choice of affine qparams from a [min, max] range: a port of ATen's
// quant_utils::ChooseQuantizationParams as called by torch.fused_moving_avg_obs_fake_quant on
// the CPU (preserve_sparsity = symmetric; reduce_range halves the range as ATen does),
// including the 0.1 fallback for a zero / overflowing scale and the small-scale cut-off.
// Where ATen's CUDA kernel computes something else (no cut-off; another zero-point error
// rule) we follow the CPU (docs/numerics.md).
struct AffineQParams {
  float scale;
  int32_t zero_point;
};

constexpr float kSmallScaleThreshold = 6.1e-5f;

FQ_HD AffineQParams choose_qparams(float min, float max, int32_t qmin, int32_t qmax, bool symmetric,
                                   bool reduce_range) {
  if (reduce_range) {
    qmin = qmin / 2;
    qmax = qmax / 2;
  }
  if (min < 0 && max > 0 && symmetric) {
    const int32_t symmetric_qmin = -((qmax - qmin) / 2 + 1);
    const int32_t symmetric_qmax = (qmax - qmin) / 2;
    // std::max(a, b) is (a < b) ? b : a; written out so NaN behaves as in ATen.
    const float from_min = fabsf(min / static_cast<float>(symmetric_qmin));
    const float from_max = fabsf(max / static_cast<float>(symmetric_qmax));
    const double max_scale = from_min < from_max ? from_max : from_min;
    min = static_cast<float>(max_scale * symmetric_qmin);
    max = static_cast<float>(max_scale * symmetric_qmax);
  }
  // Extend [min, max] to contain 0. (Unobserved stats, min = +inf and max = -inf, give
  // [0, 0] here and the 0.1 fallback below.)
  min = 0.0f < min ? 0.0f : min;  // std::min(min, 0.f)
  max = max < 0.0f ? 0.0f : max;  // std::max(max, 0.f)
  double scale = (static_cast<double>(max) - min) / (qmax - qmin);
  if (static_cast<float>(scale) == 0.0f || is_inf(1.0f / static_cast<float>(scale))) scale = 0.1;
  if (scale < kSmallScaleThreshold) {
    const float org_scale = static_cast<float>(scale);
    scale = kSmallScaleThreshold;
    if (min == 0.0f) {
      max = kSmallScaleThreshold * static_cast<float>(qmax - qmin);
    } else if (max == 0.0f) {
      min = -kSmallScaleThreshold * static_cast<float>(qmax - qmin);
    } else {
      const float amplifier = kSmallScaleThreshold / org_scale;
      min *= amplifier;
      max *= amplifier;
    }
  }
  const double zero_point_from_min = qmin - min / scale;
  const double zero_point_from_max = qmax - max / scale;
  const double zero_point_from_min_error = fabs(static_cast<double>(qmin)) - fabs(min / scale);
  const double zero_point_from_max_error = fabs(static_cast<double>(qmax)) - fabs(max / scale);
  double initial_zero_point =
      zero_point_from_min_error < zero_point_from_max_error ? zero_point_from_min : zero_point_from_max;
  if (min < 0 && max > 0 && symmetric) initial_zero_point = static_cast<double>(qmin + qmax) / 2;
  // A NaN initial zero point (a NaN or infinite range, a 2-level symmetric range, an overflowed
  // moving average) takes quant_min: ATen converts the NaN to int32 (undefined behaviour;
  // INT_MIN on x86, 0 on the GPU). The scale is then NaN or infinite, which poisons the
  // quant-dequant that uses it (docs/numerics.md).
  int32_t zero_point;
  if (!(initial_zero_point >= qmin)) {
    zero_point = qmin;
  } else if (initial_zero_point > qmax) {
    zero_point = qmax;
  } else {
    zero_point = static_cast<int32_t>(rint(initial_zero_point));
  }
  return {static_cast<float>(scale), zero_point};
}

// ---------------------------------------------------------------------------
// Learnable qparams (LSQ / LSQ+): PyTorch's _fake_quantize_learnable_per_{tensor,channel}_affine
// and their backward, formula by formula (docs/numerics.md, "Learnable scale and zero point").
// The zero point is a float32 tensor that training moves; each use rounds it its own way.

// mul_rn (above) keeps each product separately rounded on the GPU too.

// a * b + c rounded once. On the host std::fma is a single instruction where the CPU has
// FMA (the kernels that use it are built for such CPUs too, see kernels/cpu/learnable.cpp)
// and an exact library routine elsewhere; either way the result is the correctly rounded one.
FQ_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

FQ_HD float clamp_float(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Forward, per-tensor and per-channel alike: nearbyint (ties to even), then clamp to the range.
FQ_HD float learnable_zero_point_forward(float zero_point, float quant_min, float quant_max) {
  return clamp_float(round_half_even(zero_point), quant_min, quant_max);
}

// Per-tensor backward (ATen's _get_zero_point_from_tensor(..., is_forward=false)): add 0.5
// in float, clamp, truncate toward zero. This differs from the forward's rounding: 2.5 -> 3
// (forward 2), -1.2 -> 0 (forward -1), -2.7 -> -2 (forward -3).
FQ_HD float learnable_zero_point_backward_per_tensor(float zero_point, float quant_min, float quant_max) {
  const float t = clamp_float(zero_point + 0.5f, quant_min, quant_max);
#if defined(__CUDA_ARCH__)
  return truncf(t);
#else
  return std::trunc(t);
#endif
}

// Per-channel backward (ATen's zero_point.round().clamp_(quant_min, quant_max)): the same as
// the forward rounding.
FQ_HD float learnable_zero_point_backward_per_channel(float zero_point, float quant_min, float quant_max) {
  return learnable_zero_point_forward(zero_point, quant_min, quant_max);
}

// Contract on learnable qparams: scale a positive normal float (1/scale finite) and a finite
// zero point (any value: it is clamped into the range). Out-of-contract qparams poison
// everything they govern with NaN (the bindings reject them up front on the CPU).
FQ_HD bool learnable_qparams_valid(float scale, float zero_point) {
  const bool zero_point_finite = zero_point - zero_point == 0.0f;  // false for NaN and +-inf
  return scale >= 1.17549435e-38f && scale <= 3.40282347e+38f && zero_point_finite;
}

// The gradients of one element, given the incoming gradient dy, the scale, its fp32 inverse,
// the backward-rounded (integer-valued) zero point zp and grad_factor:
//
//   q = nearbyint(fma(x, inv_scale, zp))            (zp added before rounding, one rounding
//                                                    of x * inv_scale + zp: ATen's x86 build)
//   in range (quant_min <= q <= quant_max):
//     grad_input = dy * 1
//     grad_scale = ((dy * fma(q - zp, scale, -x)) * inv_scale) * grad_factor
//                  (the fake-quantised value minus x, rounded once)
//     grad_zp    = 0
//   below / above the range:
//     grad_input = dy * 0                            (keeps dy's sign on zero, as ATen)
//     grad_scale = (dy * (quant_min - zp)) * grad_factor   or (quant_max - zp)
//     grad_zp    = ((dy * -1) * scale) * grad_factor
//   x NaN: grad_input = dy * 0, grad_scale = grad_zp = NaN (the NaN reaches the qparams'
//   gradients instead of vanishing); x = +-inf saturates like any value beyond the range.
//
// Every step is one fp32 operation in this order, so the values are bit-identical to ATen's
// per-element values on the CPU (its AVX2/AVX512 kernels, which contract the two multiply-adds
// above into FMAs). grad_scale and grad_zp are then summed over the tensor or the channel.
struct LearnableGrad {
  float grad_input;
  float grad_scale;
  float grad_zero_point;
};

FQ_HD LearnableGrad learnable_grad(float x, float dy, float scale, float inv_scale, float zero_point,
                                   float quant_min, float quant_max, float grad_factor) {
  const float q = round_half_even(fma_rn(x, inv_scale, zero_point));
  const bool below = q < quant_min;
  const bool above = q > quant_max;
  const bool nan = is_nan(x);
  const bool in_range = !(below | above | nan);
  const float grad_input = mul_rn(dy, in_range ? 1.0f : 0.0f);
  const float inside = mul_rn(mul_rn(mul_rn(dy, fma_rn(q - zero_point, scale, -x)), inv_scale), grad_factor);
  const float edge = (below ? quant_min : quant_max) - zero_point;
  const float outside = mul_rn(mul_rn(dy, edge), grad_factor);
  const float grad_zp_outside = mul_rn(mul_rn(mul_rn(dy, -1.0f), scale), grad_factor);
  const float nan_value = bits_float(0x7FC00000u);
  return {grad_input, nan ? nan_value : (in_range ? inside : outside),
          nan ? nan_value : (in_range ? 0.0f : grad_zp_outside)};
}

// ---------------------------------------------------------------------------
// ConvBN folding (docs/convbn.md): per-channel formulas in double, shared by the CPU loop
// and the CUDA kernel of the ConvBN op (fakequant/convbn.h). s is the fold scale (the weight
// is quantised as Q(W * s)); the output before ReLU is y = u * a + b with u the convolution
// of the fold; backward: xhat = (z - mean) * alpha for the saved pre-BN activation z,
// dz = k * (g - mean(g) - xhat * mean(g * xhat)); ds/dgamma = r; e enters ds (below).

struct ConvBnFold {
  double mean, alpha, k, scale, r, e, a, b;
};

struct ConvBnParamGrads {
  double gamma, beta, bias;
};

FQ_HD double convbn_rsqrt(double v) { return 1.0 / sqrt(v); }

// nn.BatchNorm2d's running update: (1 - momentum) * running + momentum * batch.
FQ_HD float convbn_running_update(float running, double batch, double momentum) {
  return static_cast<float>((1.0 - momentum) * static_cast<double>(running) + momentum * batch);
}

// The unbiased variance BatchNorm2d keeps: var * n / (n - 1).
FQ_HD double convbn_unbiased(double biased_var, double n) { return biased_var * (n / (n - 1.0)); }

// Mean and biased variance from shifted sums s1 = sum (x - shift), s2 = sum (x - shift)^2.
FQ_HD void convbn_moments_from_sums(double shift, double s1, double s2, double n, double* mean, double* var) {
  const double d = s1 / n;
  const double v = s2 / n - d * d;
  *mean = shift + d;
  *var = v > 0.0 ? v : 0.0;
}

// Eval / frozen BN, both modes: s = gamma / sigma_run,
// y = conv(x, Q(W * s)) + beta + s * (bias - running_mean); e = bias - running_mean.
FQ_HD ConvBnFold convbn_fold_eval(double gamma, double beta, double bias, float running_mean, float running_var,
                                  double eps) {
  const double r = convbn_rsqrt(static_cast<double>(running_var) + eps);
  const double s = gamma * r;
  const double e = bias - static_cast<double>(running_mean);
  return {0.0, 0.0, 1.0, s, r, e, 1.0, beta + s * e};
}

// Training, running mode, before the convolution: s = gamma / sigma_run. A channel with
// gamma == 0 would divide 0 by 0 below (PyTorch's ConvBn2d gives NaN, pytorch#77434): it
// folds with s = 1 instead, held constant (r = 0), and its output is beta.
FQ_HD ConvBnFold convbn_fold_running_scale(double gamma, float running_var, double eps) {
  const double r = convbn_rsqrt(static_cast<double>(running_var) + eps);
  const bool zero = gamma == 0.0;
  return {0.0, 0.0, 0.0, zero ? 1.0 : gamma * r, zero ? 0.0 : r, 0.0, 0.0, 0.0};
}

// ... after it, from the moments of u = conv(x, Q(W * s)): c = u / s + bias has
// mu_c = mean_u / s + bias, var_c = var_u / s^2, and y = gamma (c - mu_c) / sigma_c + beta
// = u * (k / s) + beta - k * mean_u / s with k = gamma / sigma_c. The division by s adds
// -gamma * eps * sum(g xhat) / ((var_c + eps) s) to ds (e is that factor). r is the caller's.
FQ_HD ConvBnFold convbn_fold_running(double s, double gamma, double beta, double mean_u, double var_u, double eps) {
  const double var_c = (var_u / s) / s;
  const double invstd = convbn_rsqrt(var_c + eps);
  const double k = gamma * invstd;
  const double e = gamma == 0.0 ? 0.0 : -gamma * eps / ((var_c + eps) * s);
  return {mean_u, invstd / s, k / s, s, 0.0, e, k / s, beta - k * (mean_u / s)};
}

// Training, batch mode, from the moments of z = conv(x, W) (no bias; the bias cancels):
// s = gamma / sigma_B, y = conv(x, Q(W * s)) + beta - s * mu_B.
FQ_HD ConvBnFold convbn_fold_batch(double gamma, double beta, double mean, double var, double eps) {
  const double invstd = convbn_rsqrt(var + eps);
  const double s = gamma * invstd;
  return {mean, invstd, s, s, 0.0, 0.0, 1.0, beta - s * mean};
}

// Gradients of gamma, beta and the conv bias from sum g, sum g * xhat and
// sum_w = sum_W(dW_conv * mask * W) (the fold's share of ds).
FQ_HD ConvBnParamGrads convbn_param_grads(bool training, double sum_g, double sum_gx, double sum_w, double s,
                                          double r, double e) {
  if (!training) return {(sum_w + e * sum_g) * r, sum_g, s * sum_g};
  // Training BN removes the conv bias from the output: its gradient is 0. Batch mode: r = 0.
  return {sum_gx + (sum_w + e * sum_gx) * r, sum_g, 0.0};
}

}  // namespace fakequant
