// The CPU fast path of block-scaled fake quantization: 1-row tiles (MX, NVFP4 1 x 16,
// per-group, per-token, per-row FP8) of a multiple of 8 elements that divide the row, rounding
// half to even. The generic path (kernels/cpu/block_quant.cpp) evaluates block_element per
// element with the rule, format and rounding read at run time and the mask written bit by bit;
// here the format, the rule's scaling direction and the dtype are template arguments, the
// element loop is branch-free (selects, the 2^23 rounding trick, power-of-two scalings built
// from exponent bits), so GCC vectorises it, and the mask is packed 8 flags at a time. Values,
// scales and masks are the generic path's bit for bit (the same formulas; checked by the
// GoogleTests, which run both paths).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fakequant/block_quant.h"
#include "fakequant/dispatch.h"
#include "abs_max_bits.h"
#include "pack_bits.h"

// Compiled twice (GCC target_clones): AVX2 (8 float lanes) and the baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FQ_BLOCK_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define FQ_BLOCK_CLONES
#endif

namespace fakequant {
namespace {

// The tile's statistics, as tile_stats in block_quant.cpp: the abs-max as an integer max over
// abs_bits (abs_max_bits.h, inlined into each clone); min / max as integer keys (below).
template <typename T>
FQ_BLOCK_CLONES uint32_t row_abs_max_bits(const T* __restrict__ x, int64_t n) {
  return abs_max_bits(x, n);
}

// min / max of a tile, as integer keys that order like the floats (a negative float's
// magnitude bits inverted; the map is its own inverse): GCC does not vectorise a float min/max
// reduction without -ffinite-math-only, but it vectorises an integer one, as for the abs-max.
// NaN keys lie outside [key(-inf), key(+inf)], so the extremes show whether the tile has one.
// -0 orders below +0 here; no rule reads the sign of a zero extreme (min(lo, 0) and max(hi, 0)
// are taken first, and -0 and +0 give the same qparams).
inline int32_t ordered_key(uint32_t bits) {
  const int32_t b = static_cast<int32_t>(bits);
  return b < 0 ? b ^ 0x7FFFFFFF : b;
}
constexpr int32_t kKeyPosInf = 0x7F800000;
constexpr int32_t kKeyNegInf = static_cast<int32_t>(0xFF800000u ^ 0x7FFFFFFFu);

// The 16-bit floats order the same way in their own bits: 16-bit keys, twice the lanes.
inline int16_t ordered_key16(uint16_t bits) {
  const int16_t b = static_cast<int16_t>(bits);
  return b < 0 ? static_cast<int16_t>(b ^ 0x7FFF) : b;
}

// The tile's extremes as float32 values (NaN where the tile has a NaN of that sign).
template <typename T>
FQ_BLOCK_CLONES void row_min_max_keys(const T* __restrict__ x, int64_t n, float* lo_out, float* hi_out) {
  if constexpr (std::is_same_v<T, float>) {
    int32_t lo = kKeyPosInf;  // the extremes of an empty tile: +inf, -inf
    int32_t hi = kKeyNegInf;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t k = ordered_key(float_bits(x[i]));
      lo = k < lo ? k : lo;
      hi = k > hi ? k : hi;
    }
    *lo_out = bits_float(static_cast<uint32_t>(ordered_key(static_cast<uint32_t>(lo))));
    *hi_out = bits_float(static_cast<uint32_t>(ordered_key(static_cast<uint32_t>(hi))));
  } else {
    int16_t lo = 0x7FFF;  // above every key; a non-empty tile replaces it
    int16_t hi = static_cast<int16_t>(-0x8000);
    for (int64_t i = 0; i < n; ++i) {
      const int16_t k = ordered_key16(x[i].bits);
      lo = k < lo ? k : lo;
      hi = k > hi ? k : hi;
    }
    *lo_out = n > 0 ? to_float(T{static_cast<uint16_t>(ordered_key16(static_cast<uint16_t>(lo)))}) : INFINITY;
    *hi_out = n > 0 ? to_float(T{static_cast<uint16_t>(ordered_key16(static_cast<uint16_t>(hi)))}) : -INFINITY;
  }
}

// The rules that read min and max do not read the abs-max pass: max |x| = max(|lo|, |hi|)
// when no element is NaN, and NaN otherwise, as tile_stats computes it.
template <typename T>
BlockStats row_stats(const T* __restrict__ x, int64_t n, bool min_max) {
  const float qnan = bits_float(0x7FC00000u);
  if (!min_max) {
    const uint32_t amax = row_abs_max_bits(x, n);
    return {amax > 0x7F800000u ? qnan : bits_float(amax), INFINITY, -INFINITY};
  }
  float lo = 0.0f;
  float hi = 0.0f;
  row_min_max_keys(x, n, &lo, &hi);
  // NaNs order beyond the infinities: a positive one is the maximum, a negative one the minimum.
  if (lo != lo || hi != hi) return {qnan, qnan, qnan};
  const float alo = std::fabs(lo);
  const float ahi = std::fabs(hi);
  return {n > 0 ? (alo > ahi ? alo : ahi) : 0.0f, lo, hi};
}

// v rounded to T and back (round_to_storage with the dtype a template argument).
template <typename T>
inline float round_to(float v) {
  return to_float(from_float<T>(v));
}

// round_minifloat(v, f, kHalfEven) without branches: the same grid step, the same rounding.
template <BlockFormat F>
inline float minifloat_rne(float v) {
  constexpr MiniFloat f = {F == BlockFormat::kE4M3 ? 3 : F == BlockFormat::kE5M2 ? 2 : F == BlockFormat::kE3M2 ? 2
                           : F == BlockFormat::kE2M3 ? 3 : 1,
                           F == BlockFormat::kE4M3 ? -6 : F == BlockFormat::kE5M2 ? -14 : F == BlockFormat::kE3M2 ? -2 : 0,
                           F == BlockFormat::kE4M3 ? 448.0f : F == BlockFormat::kE5M2 ? 57344.0f
                           : F == BlockFormat::kE3M2 ? 28.0f : F == BlockFormat::kE2M3 ? 7.5f : 6.0f,
                           0};
  const uint32_t vb = float_bits(v);
  const uint32_t ab = vb & 0x7FFFFFFFu;
  int32_t e = static_cast<int32_t>(ab >> 23) - 127;
  e = e < f.emin ? f.emin : e;
  e = e > 127 ? 127 : e;  // inf / NaN: any in-range exponent, the result is replaced below
  const float up = bits_float(static_cast<uint32_t>(f.mbits - e + 127) << 23);
  const float down = bits_float(static_cast<uint32_t>(e - f.mbits + 127) << 23);
  const float q = round_half_even(v * up) * down;
  const float a = bits_float(ab);
  const float saturated = bits_float((vb & 0x80000000u) | float_bits(f.max));
  const float r = a <= f.max ? q : saturated;
  return v != v ? v : r;
}

// One tile: values and in-range flags in one flat loop (vectorised: no control flow, the
// affine zero point a template argument), then the flags packed into mask bytes. kExact: the
// affine rounding steps T(q) and T(T(q) - T(zp)) are known to be exact (affine_levels_exact)
// and are skipped; the result is the same bits (a NaN is canonicalised by the final store).
template <typename T, BlockFormat F, bool kInDivide, bool kOutDivide, bool kAffine, bool kExact = false>
FQ_BLOCK_CLONES void quant_row_tile(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ flags,
                                    int64_t n, float in, float out, float zp, float zp_t,
                                    float qmin, float qmax) {
  constexpr float kMax = F == BlockFormat::kE4M3 ? 448.0f : F == BlockFormat::kE5M2 ? 57344.0f
                         : F == BlockFormat::kE3M2 ? 28.0f : F == BlockFormat::kE2M3 ? 7.5f : 6.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float xv = to_float(x[i]);
    const float v = kInDivide ? xv / in : xv * in;
    float q;
    bool ok;
    if constexpr (F == BlockFormat::kInt) {
      float r = round_half_even(v);
      if constexpr (kAffine) r = r + zp;
      ok = (r >= qmin) & (r <= qmax);
      float c = r < qmin ? qmin : r;
      c = c > qmax ? qmax : c;
      q = r != r ? r : c;
      if constexpr (kAffine && kExact) q = q - zp_t;
      if constexpr (kAffine && !kExact) q = round_to<T>(round_to<T>(q) - zp_t);  // T(T(q) - T(zp)): zp_t is T(zp)
    } else {
      const float a = v < 0.0f ? -v : v;
      ok = a <= kMax;
      q = minifloat_rne<F>(v);
    }
    y[i] = from_float<T>(kOutDivide ? q / out : q * out);
    flags[i] = static_cast<uint8_t>(ok);
  }
}

// Whether T represents every integer level q in [qmin, qmax] and every q - zp_t exactly (zp_t an
// integer): then T(q) == q and T(q - zp_t) == q - zp_t. The 16-bit floats hold the integers up
// to 2^(mantissa bits + 1): 256 (bfloat16), 2048 (float16), which covers 8-bit grids.
template <typename T>
bool affine_levels_exact(float qmin, float qmax, float zp_t) {
  const float limit = std::is_same_v<T, BFloat16> ? 256.0f : std::is_same_v<T, Half> ? 2048.0f : 16777216.0f;
  const bool integer = zp_t - zp_t == 0.0f && std::nearbyint(zp_t) == zp_t;  // false for NaN and inf
  return integer && std::fabs(qmin) <= limit && std::fabs(qmax) <= limit && std::fabs(qmin - zp_t) <= limit &&
         std::fabs(qmax - zp_t) <= limit;
}

template <typename T, BlockFormat F, bool kInDivide, bool kOutDivide>
void quant_rows(const BlockQuantArgs& a, int64_t row_begin, int64_t row_end) {
  const T* x = static_cast<const T*>(a.input);
  T* y = static_cast<T*>(a.output);
  const int64_t gcols = block_grid_cols(a);
  const int64_t L = a.block_cols;
  const bool min_max = block_rule_uses_min_max(a.rule);
  const float tensor_amax = a.tensor_amax != nullptr ? *a.tensor_amax : 0.0f;
  const bool whole = block_covers_tensor(a);
  const float qmin = static_cast<float>(a.quant_min);
  const float qmax = static_cast<float>(a.quant_max);
  std::vector<uint8_t> flags(static_cast<size_t>(L));
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t g = 0; g < gcols; ++g) {
      const int64_t off = r * a.cols + g * L;
      const BlockTransform t = block_transform(a, row_stats(x + off, L, min_max), tensor_amax, whole);
      a.scale[r * gcols + g] = t.scale;
      if (a.zero_point != nullptr) a.zero_point[r * gcols + g] = static_cast<int32_t>(t.zero_point);
      const float zp_t = round_to_storage(t.zero_point, t.affine_dtype);
      if (t.affine && affine_levels_exact<T>(qmin, qmax, zp_t)) {
        quant_row_tile<T, F, kInDivide, kOutDivide, true, true>(x + off, y + off, flags.data(), L, t.in_factor,
                                                                t.out_factor, t.zero_point, zp_t, qmin, qmax);
      } else if (t.affine) {
        quant_row_tile<T, F, kInDivide, kOutDivide, true>(x + off, y + off, flags.data(), L, t.in_factor,
                                                          t.out_factor, t.zero_point, zp_t, qmin, qmax);
      } else {
        quant_row_tile<T, F, kInDivide, kOutDivide, false>(x + off, y + off, flags.data(), L, t.in_factor,
                                                           t.out_factor, 0.0f, 0.0f, qmin, qmax);
      }
      if (a.mask != nullptr) {
        uint8_t* m = a.mask + off / 8;
        for (int64_t k = 0; k < L / 8; ++k) m[k] = pack_bits(flags.data() + 8 * k);
      }
    }
  }
}

template <typename T, BlockFormat F>
void dispatch_directions(const BlockQuantArgs& a, int64_t b0, int64_t b1) {
  // The scaling directions depend on the rule alone (not on values): read them off one transform.
  const BlockTransform probe = block_transform(a, BlockStats{1.0f, -1.0f, 1.0f}, 1.0f, block_covers_tensor(a));
  const bool in = probe.in_divide;
  const bool out = probe.out_divide;
  if (in && out) return quant_rows<T, F, true, true>(a, b0, b1);
  if (in) return quant_rows<T, F, true, false>(a, b0, b1);
  if (out) return quant_rows<T, F, false, true>(a, b0, b1);
  quant_rows<T, F, false, false>(a, b0, b1);
}

template <typename T>
void dispatch_format(const BlockQuantArgs& a, int64_t b0, int64_t b1) {
  switch (a.format) {
    case BlockFormat::kInt:
      return dispatch_directions<T, BlockFormat::kInt>(a, b0, b1);
    case BlockFormat::kE4M3:
      return dispatch_directions<T, BlockFormat::kE4M3>(a, b0, b1);
    case BlockFormat::kE5M2:
      return dispatch_directions<T, BlockFormat::kE5M2>(a, b0, b1);
    case BlockFormat::kE3M2:
      return dispatch_directions<T, BlockFormat::kE3M2>(a, b0, b1);
    case BlockFormat::kE2M3:
      return dispatch_directions<T, BlockFormat::kE2M3>(a, b0, b1);
    case BlockFormat::kE2M1:
      return dispatch_directions<T, BlockFormat::kE2M1>(a, b0, b1);
  }
}

}  // namespace

bool block_quant_rows_applies(const BlockQuantArgs& a) {
  return a.block_rows == 1 && a.block_cols % 8 == 0 && a.cols % a.block_cols == 0 &&
         a.rounding == Rounding::kHalfEven;
}

void block_quant_cpu_rows(const BlockQuantArgs& a, int64_t row_begin, int64_t row_end) {
  row_end = std::min(row_end, a.rows);
  if (row_begin >= row_end || a.cols == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) { dispatch_format<typename decltype(tag)::type>(a, row_begin, row_end); });
}

}  // namespace fakequant
