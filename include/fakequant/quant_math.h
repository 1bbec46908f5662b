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

FQ_HD uint16_t float_to_half_bits(float v) {
  const uint32_t u = float_bits(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x0200u : 0u));
  }
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
  if (v != v) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
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
  kHalfEven = 0,  // round half to even (PyTorch's std::nearbyint / rint)
  kHalfAway = 1,  // round half away from zero (Paddle round_type=1, std::round)
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

FQ_HD float round_with(float v, Rounding mode) {
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
                                       float quant_min, float quant_max, Rounding mode) {
  const float q = round_with(x * inv_scale, mode) + zero_point;
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
                                                float quant_min, float quant_max, Rounding mode) {
#if defined(__CUDA_ARCH__)
  const float shifted = __fmaf_rn(x, inv_scale, zero_point);
#else
  const float shifted = std::fma(x, inv_scale, zero_point);
#endif
  const float q = round_with(shifted, mode);
  const bool in_range = (q >= quant_min) & (q <= quant_max);
  float clamped = q < quant_min ? quant_min : q;
  clamped = clamped > quant_max ? quant_max : clamped;
  const double y = (static_cast<double>(clamped) - static_cast<double>(zero_point)) * static_cast<double>(scale);
  return {is_nan(x) ? x : static_cast<float>(y), in_range};
}

// The reciprocal the forward pass multiplies by: 1.0f / scale in fp32, correctly rounded,
// as ATen computes it. Kept in one place so CPU and CUDA cannot drift.
FQ_HD float inverse_scale(float scale) { return 1.0f / scale; }


// ---------------------------------------------------------------------------
// Learnable qparams (LSQ / LSQ+): PyTorch's _fake_quantize_learnable_per_{tensor,channel}_affine
// and their backward, formula by formula (docs/numerics.md, "Learnable scale and zero point").
// The zero point is a float32 tensor that training moves; each use rounds it its own way.

// Separately rounded float operations. On the GPU the intrinsics keep nvcc from fusing a
// product into a following add (it contracts by default); on the host the kernels are
// compiled with -ffp-contract=off, so plain operators already round each step.
FQ_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

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

}  // namespace fakequant
