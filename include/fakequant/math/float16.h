// 16-bit float storage types and their conversions (binary16, bfloat16).
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include <type_traits>

#include "fakequant/math/config.h"

namespace fakequant {

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

// The compute type of a storage type: float for float32 and the 16-bit floats, double for
// double. load_acc widens an element to it, store_as rounds a computed value back.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

FQ_HD float load_acc(float v) { return v; }
FQ_HD float load_acc(Half v) { return to_float(v); }
FQ_HD float load_acc(BFloat16 v) { return to_float(v); }
FQ_HD double load_acc(double v) { return v; }

template <typename T, typename Acc>
FQ_HD T store_as(Acc v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return from_float<T>(v);
  }
}

}  // namespace fakequant
