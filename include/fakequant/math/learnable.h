// Learnable qparams (LSQ / LSQ+): zero-point roundings and per-element gradients.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/observers.h"

namespace fakequant {

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

}  // namespace fakequant
