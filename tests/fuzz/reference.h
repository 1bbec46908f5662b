// A plain double-precision reference of the numerics contract (docs/numerics.md), written
// independently of include/fakequant/quant_math.h: rounding from std::floor in double,
// 16-bit floats from frexp / ldexp, products and sums that are exact in double (rounded once
// to float where the contract rounds once), integer quantization levels as ATen keeps them,
// and ATen's ChooseQuantizationParams transcribed from ATen's source.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace fuzzref {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

constexpr double kTwo23 = 8388608.0;
constexpr float kSmallestNormal = 1.17549435e-38f;  // 2^-126
constexpr float kFloatMax = std::numeric_limits<float>::max();

enum class Mode { kHalfEven, kHalfAway, kStochastic };

// ---------------------------------------------------------------------------------------
// Rounding to an integer.

// v finite with |v| < 2^52: the nearest integer, ties to even or away from zero.
inline double round_ties(double v, bool ties_to_even) {
  const double f = std::floor(v);
  const double frac = v - f;  // exact: f <= v < f + 1
  if (frac < 0.5) return f;
  if (frac > 0.5) return f + 1.0;
  if (ties_to_even) return std::fmod(f, 2.0) == 0.0 ? f : f + 1.0;
  return v > 0.0 ? f + 1.0 : f;
}

// rint / std::round on a float: a zero result keeps v's sign; inf and NaN pass through.
inline float round_nearest(float v, bool ties_to_even) {
  if (!std::isfinite(v) || std::fabs(static_cast<double>(v)) >= kTwo23) return v;  // integers already
  const double r = round_ties(v, ties_to_even);
  return r == 0.0 ? std::copysign(0.0f, v) : static_cast<float>(r);
}

// floor(v + u) in real arithmetic, u = (random >> 8) * 2^-24; floats with |v| >= 2^23 are
// integers and stay. A zero result is -0 for v < 0 and +0 otherwise, as numerics.md's case
// split gives it ("v >= 0: ... floor(a)"; "v < 0: ... -floor(a)").
inline float round_stochastic(float v, uint32_t random) {
  if (!std::isfinite(v) || std::fabs(static_cast<double>(v)) >= kTwo23) return v;
  const double u = static_cast<double>(random >> 8) * 0x1p-24;
  const double whole = std::floor(static_cast<double>(v));
  // floor(v + u) = whole + 1 iff u >= (whole + 1) - v. The difference is exact in double
  // wherever it decides (|v| >= 1; v in (-1, 0), where it is -v; 2^-30 <= v < 1); for
  // 0 <= v < 2^-30 it rounds to a value above 1 - 2^-24, the largest u, as its exact value is.
  const double r = u >= (whole + 1.0) - static_cast<double>(v) ? whole + 1.0 : whole;
  if (r == 0.0) return v < 0.0f ? -0.0f : 0.0f;
  return static_cast<float>(r);
}

inline float round_with(float v, Mode mode, uint32_t random) {
  if (mode == Mode::kStochastic) return round_stochastic(v, random);
  return round_nearest(v, mode == Mode::kHalfEven);
}

// ---------------------------------------------------------------------------------------
// 16-bit floats.

// A 16-bit float with `mantissa_bits` stored mantissa bits: sign, 15 - mantissa_bits exponent
// bits (IEEE bias), mantissa. fp16 has 10 mantissa bits, bfloat16 7.
inline float sixteen_bit_to_float(uint16_t v, int mantissa_bits) {
  const int exponent_bits = 15 - mantissa_bits;
  const int max_exponent = (1 << exponent_bits) - 1;
  const int bias = max_exponent / 2;
  const bool negative = (v & 0x8000u) != 0;
  const int exponent = (v >> mantissa_bits) & max_exponent;
  const int mantissa = v & ((1 << mantissa_bits) - 1);
  double magnitude;
  if (exponent == max_exponent) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissa_bits);
  } else {
    magnitude = std::ldexp(static_cast<double>((1 << mantissa_bits) + mantissa), exponent - bias - mantissa_bits);
  }
  const float f = static_cast<float>(magnitude);
  return negative ? -f : f;
}

inline float half_to_float(uint16_t h) { return sixteen_bit_to_float(h, 10); }
inline float bfloat16_to_float(uint16_t b) { return sixteen_bit_to_float(b, 7); }

// Every NaN stores the canonical 0x7FFF (docs/numerics.md, "16-bit floats").
constexpr uint16_t kCanonicalNaN16 = 0x7FFF;

// |v| rounded to nearest-even on the grid of a binary format with `mantissa_bits` stored
// mantissa bits and smallest normal exponent `min_exponent` (values below 2^min_exponent
// use the subnormal spacing 2^(min_exponent - mantissa_bits)).
inline double round_to_format(double a, int mantissa_bits, int min_exponent) {
  int e2;
  std::frexp(a, &e2);  // a in [2^(e2-1), 2^e2)
  const int exponent = std::max(e2 - 1, min_exponent);
  const int spacing_exp = exponent - mantissa_bits;
  const double units = std::ldexp(a, -spacing_exp);  // exact (a power-of-two scaling)
  return std::ldexp(round_ties(units, true), spacing_exp);
}

// v rounded to nearest-even into the format of sixteen_bit_to_float: past the largest finite
// value inf, below the smallest normal the subnormal spacing, every NaN canonical.
inline uint16_t float_to_sixteen_bit(float v, int mantissa_bits) {
  if (std::isnan(v)) return kCanonicalNaN16;
  const int max_exponent = (1 << (15 - mantissa_bits)) - 1;
  const int bias = max_exponent / 2;
  const uint16_t sign = std::signbit(v) ? 0x8000u : 0u;
  const double a = std::fabs(static_cast<double>(v));
  if (a == 0.0) return sign;
  const double r = std::isinf(a) ? a : round_to_format(a, mantissa_bits, 1 - bias);
  if (r >= std::ldexp(1.0, bias + 1)) return static_cast<uint16_t>(sign | (max_exponent << mantissa_bits));
  if (r < std::ldexp(1.0, 1 - bias)) {
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::ldexp(r, mantissa_bits + bias - 1)));
  }
  int e2;
  std::frexp(r, &e2);
  const int exponent = e2 - 1;
  const int mantissa = static_cast<int>(std::ldexp(r, mantissa_bits - exponent)) - (1 << mantissa_bits);
  return static_cast<uint16_t>(sign | ((exponent + bias) << mantissa_bits) | mantissa);
}

inline uint16_t float_to_half(float v) { return float_to_sixteen_bit(v, 10); }
inline uint16_t float_to_bfloat16(float v) { return float_to_sixteen_bit(v, 7); }

// ---------------------------------------------------------------------------------------
// Quant-dequant (docs/numerics.md, "Affine quant-dequant", "Per-channel").

// fp32(a * b + c) with one rounding, from exact double arithmetic: a * b is exact in double,
// the sum is an exact double-double (TwoSum), and its rounding to float is corrected where
// the double sum fell exactly on a midpoint between two floats.
inline float fma_to_float(float a, float b, float c) {
  const double p = static_cast<double>(a) * static_cast<double>(b);
  const double s = p + static_cast<double>(c);
  if (!std::isfinite(s)) return static_cast<float>(s);
  const double bb = s - p;
  const double err = (p - (s - bb)) + (static_cast<double>(c) - bb);  // s + err == p + c exactly
  const float f = static_cast<float>(s);
  if (err == 0.0 || static_cast<double>(f) == s || std::isinf(f)) return f;
  // f is one of the two floats around s; is s their midpoint?
  const float g = std::nextafter(
      f, static_cast<double>(f) < s ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity());
  if (std::isinf(g)) return f;
  const double mid = (static_cast<double>(f) + static_cast<double>(g)) * 0.5;  // exact
  if (s != mid) return f;
  const float lo = std::min(f, g), hi = std::max(f, g);
  return err > 0.0 ? hi : lo;
}

struct QuantDequant {
  float value;
  bool in_range;
};

// Beyond this many quantization units every valid range (|bounds| <= 2^16, |zp| <= 2^16) is
// left behind: the element saturates and its level needs no exact integer.
constexpr float kSaturated = 1048576.0f;  // 2^20

// The level of a rounded value r plus `offset`, clamped to the range, and whether it lay in
// the range; an r too large for an integer saturates (out of range).
struct Clamped {
  int64_t level;
  bool in_range;
};
inline Clamped clamp_level(float r, int64_t offset, int32_t quant_min, int32_t quant_max) {
  if (!(std::fabs(r) < kSaturated)) return {r > 0.0f ? quant_max : quant_min, false};
  const int64_t q = static_cast<int64_t>(r) + offset;
  return {std::min<int64_t>(std::max<int64_t>(q, quant_min), quant_max), q >= quant_min && q <= quant_max};
}

// Integer zero point: q = round(x * inv) + zp with inv = fp32(1 / scale), the product rounded
// once to fp32; y = (clamp(q) - zp) * scale rounded once to fp32. The level is an integer
// (ATen converts it to int64), so a zero output is +0.
inline QuantDequant quant_dequant_int_zp(float x, float scale, int32_t zero_point, int32_t quant_min, int32_t quant_max,
                                         Mode mode, uint32_t random) {
  if (std::isnan(x)) return {x, false};  // NaN passes through with its bits, mask 0
  const float inv = static_cast<float>(1.0 / static_cast<double>(scale));
  const float product = static_cast<float>(static_cast<double>(x) * static_cast<double>(inv));
  const Clamped c = clamp_level(round_with(product, mode, random), zero_point, quant_min, quant_max);
  const double y = static_cast<double>(c.level - zero_point) * static_cast<double>(scale);  // exact
  return {static_cast<float>(y), c.in_range};
}

// Float zero point (ATen's per-channel path): q = round(fp32(fma(x, inv, zp))), an integer;
// y = (double(clamp(q)) - double(zp)) * double(scale), each step in double, then fp32.
inline QuantDequant quant_dequant_float_zp(float x, float scale, float zero_point, int32_t quant_min, int32_t quant_max,
                                           Mode mode, uint32_t random) {
  if (std::isnan(x)) return {x, false};
  const float inv = static_cast<float>(1.0 / static_cast<double>(scale));
  const float shifted = fma_to_float(x, inv, zero_point);
  const Clamped c = clamp_level(round_with(shifted, mode, random), 0, quant_min, quant_max);
  const double y = (static_cast<double>(c.level) - static_cast<double>(zero_point)) * static_cast<double>(scale);
  return {static_cast<float>(y), c.in_range};
}

// ---------------------------------------------------------------------------------------
// Philox4x32-10 (Random123), for the random word of an element under stochastic rounding.

struct Words {
  uint32_t w[4];
};

inline Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Element i's word for the seed (key, offset): word i % 4 of Philox at counter
// (lo32(i / 4), hi32(i / 4), lo32(offset), hi32(offset)), key (lo32(key), hi32(key)).
inline uint32_t element_random(uint64_t i, uint64_t key, uint64_t offset) {
  const uint64_t quad = i / 4;
  const Words w =
      philox4x32_10(static_cast<uint32_t>(quad), static_cast<uint32_t>(quad >> 32), static_cast<uint32_t>(offset),
                    static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
  return w.w[i % 4];
}

// ---------------------------------------------------------------------------------------
// ATen's quant_utils::ChooseQuantizationParams (ATen/native/quantized/cpu/QuantUtils.h),
// transcribed with ATen's types, preserve_sparsity = symmetric, force_scale_power_of_two off.
// ATen checks min <= max and qmin < qmax; its nearbyint of a NaN zero point into int32 is
// undefined, where the contract (docs/numerics.md) takes quant_min.

struct QParams {
  float scale;
  int32_t zero_point;
};

inline QParams choose_qparams(float min, float max, int32_t qmin, int32_t qmax, bool preserve_sparsity,
                              bool reduce_range) {
  constexpr float kSmallScaleThreshold = 6.1e-5f;
  if (reduce_range) {
    qmin = qmin / 2;
    qmax = qmax / 2;
  }
  if (min < 0 && max > 0 && preserve_sparsity) {
    const int symmetric_qmin = -((qmax - qmin) / 2 + 1);
    const int symmetric_qmax = (qmax - qmin) / 2;
    const double max_scale = std::max(std::fabs(min / static_cast<float>(symmetric_qmin)),
                                      std::fabs(max / static_cast<float>(symmetric_qmax)));
    min = static_cast<float>(max_scale * symmetric_qmin);
    max = static_cast<float>(max_scale * symmetric_qmax);
  }
  min = std::min(min, 0.f);
  max = std::max(max, 0.f);
  double scale = (static_cast<double>(max) - min) / (qmax - qmin);
  if (static_cast<float>(scale) == 0.0f || std::isinf(1.0f / static_cast<float>(scale))) scale = 0.1;
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
  const double zero_point_from_min_error = std::abs(qmin) - std::abs(min / scale);
  const double zero_point_from_max_error = std::abs(qmax) - std::abs(max / scale);
  double initial_zero_point =
      zero_point_from_min_error < zero_point_from_max_error ? zero_point_from_min : zero_point_from_max;
  if (min < 0 && max > 0 && preserve_sparsity) initial_zero_point = static_cast<double>(qmin + qmax) / 2;
  int32_t nudged;
  if (std::isnan(initial_zero_point)) {
    nudged = qmin;
  } else if (initial_zero_point < qmin) {
    nudged = qmin;
  } else if (initial_zero_point > qmax) {
    nudged = qmax;
  } else {
    nudged = static_cast<int32_t>(std::nearbyint(initial_zero_point));
  }
  return {static_cast<float>(scale), nudged};
}

// ---------------------------------------------------------------------------------------
// Minifloats of the block formats, from their encodings: every finite non-negative value,
// decoded from (exponent, mantissa) bits, in code order (which is value order), and rounding
// by looking a value up between two neighbours of that table.

struct MiniFormat {
  int exponent_bits, mantissa_bits, bias;
  bool top_exponent_special;  // E5M2: IEEE-style inf / NaN exponent; E4M3: only S.1111.111 is NaN
  bool top_code_nan;
};

// Indexed like fakequant::BlockFormat: 1 E4M3, 2 E5M2, 3 E3M2, 4 E2M3, 5 E2M1.
inline MiniFormat mini_format(int format) {
  switch (format) {
    case 1:
      return {4, 3, 7, false, true};
    case 2:
      return {5, 2, 15, true, false};
    case 3:
      return {3, 2, 3, false, false};
    case 4:
      return {2, 3, 1, false, false};
    default:
      return {2, 1, 1, false, false};
  }
}

inline std::vector<double> minifloat_values(const MiniFormat& f) {
  std::vector<double> v;
  const int exponents = 1 << f.exponent_bits, mantissas = 1 << f.mantissa_bits;
  for (int e = 0; e < exponents; ++e) {
    if (f.top_exponent_special && e == exponents - 1) break;
    for (int m = 0; m < mantissas; ++m) {
      if (f.top_code_nan && e == exponents - 1 && m == mantissas - 1) break;
      v.push_back(e == 0 ? std::ldexp(static_cast<double>(m), 1 - f.bias - f.mantissa_bits)
                         : std::ldexp(static_cast<double>(mantissas + m), e - f.bias - f.mantissa_bits));
    }
  }
  return v;
}

// v on the grid: the nearest value (ties to the even code, or away from zero), or with
// kStochastic the upper neighbour of |v| when (|v| - lower) / step + u >= 1 (v >= 0) or
// u < (|v| - lower) / step (v < 0), i.e. floor(v / step + u) * step; saturating at the largest
// value (inf too), NaN kept, the result carrying v's sign (zeros too), except that stochastic
// rounding turns -0 into +0 as round_stochastic does for integers (v < 0 is false for -0). The
// differences and u * step are exact in double, so the comparisons are.
inline float round_minifloat(float v, int format, Mode mode, uint32_t random) {
  if (std::isnan(v)) return v;
  const std::vector<double> grid = minifloat_values(mini_format(format));
  const double a = std::fabs(static_cast<double>(v));
  const auto with_sign = [&](double m) { return std::copysign(static_cast<float>(m), v); };
  if (a >= grid.back()) return with_sign(grid.back());
  const size_t hi = static_cast<size_t>(std::lower_bound(grid.begin(), grid.end(), a) - grid.begin());
  if (grid[hi] == a) return mode == Mode::kStochastic && a == 0.0 ? 0.0f : with_sign(a);
  const size_t lo = hi - 1;  // grid[0] = 0 < a
  const double below = a - grid[lo], above = grid[hi] - a, step = grid[hi] - grid[lo];
  bool up;
  if (mode == Mode::kStochastic) {
    const double u_step = static_cast<double>(random >> 8) * 0x1p-24 * step;
    up = v >= 0.0f ? below + u_step >= step : u_step < below;
  } else if (below != above) {
    up = above < below;
  } else {
    up = mode == Mode::kHalfAway || hi % 2 == 0;
  }
  return with_sign(up ? grid[hi] : grid[lo]);
}

}  // namespace fuzzref
