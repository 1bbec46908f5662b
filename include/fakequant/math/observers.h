// Reductions and observer updates: PyTorch's moving-average min/max, Paddle's abs-max
// observers, ATen's choice of qparams.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/scales.h"

namespace fakequant {

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

}  // namespace fakequant
