// Reductions that feed qparams, and the observers built on them (PyTorch's moving-average
// min/max, Paddle's moving_average_abs_max and range_abs_max): argument structs and the
// CPU reference. The CUDA launchers are declared in <fakequant/cuda/observers.h>.
//
// Like the quant-dequant API, tensors are raw pointers in memory order. Every observer
// state pointer lives in the same memory space as the data (host for the CPU reference,
// device for CUDA), so nothing is ever copied to the host to update it.
#pragma once

#include <cstdint>

#include "fakequant/fake_quant.h"

namespace fakequant {

// What a reduction computes per channel (or for the whole tensor):
//   kAbsMax: max |x|                    -> out_a
//   kMinMax: min x -> out_a, max x      -> out_b
// NaN propagates as in torch.amax / torch.aminmax. Over no elements the result is the
// identity: abs-max 0, min +inf, max -inf.
enum class ReduceKind : int32_t { kAbsMax = 0, kMinMax = 1 };

// The input of a reduction: `numel` elements of `dtype` in memory order, reduced per channel
// along one axis (channel of memory offset i = (i / channel_stride) % channels, as in
// PerChannelQParams) or, with channels == 1, over the whole tensor.
struct ReduceArgs {
  DType dtype = DType::kFloat32;
  const void* input = nullptr;
  int64_t numel = 0;
  int64_t channels = 1;
  int64_t channel_stride = 1;
};

// CPU reference. reduce_identity fills `channels` accumulators; reduce_cpu_range folds the
// elements [begin, end) (memory offsets) into them, so that threads can reduce disjoint
// ranges into private accumulators and reduce_combine merges those. out_b is only used by
// kMinMax (may be null for kAbsMax).
void reduce_identity(ReduceKind kind, int64_t channels, float* out_a, float* out_b);
void reduce_cpu_range(const ReduceArgs& args, ReduceKind kind, int64_t begin, int64_t end, float* out_a,
                      float* out_b);
void reduce_combine(ReduceKind kind, int64_t channels, const float* part_a, const float* part_b, float* out_a,
                    float* out_b);
void reduce_cpu(const ReduceArgs& args, ReduceKind kind, float* out_a, float* out_b);

// ---------------------------------------------------------------------------------------
// Observer state updates, applied to the reduced values (the epilogues of the CUDA
// reduction; plain loops on the CPU).

// Non-finite statistics (every observer below; quant_math.h, docs/numerics.md): an update
// whose batch statistic or result is not finite is not applied - the state keeps its values -
// and the quant-dequant of that call is poisoned (NaN output, mask 0).

// Paddle moving_average_abs_max (per tensor): state = r*state + 1, accum = r*accum + abs_max,
// scale = accum / state. All pointers to one float. Returns the scale the quant-dequant uses:
// the new scale, or NaN (poisoning) when the update was not applied.
struct MovingAverageAbsMaxState {
  float* scale = nullptr;
  float* state = nullptr;
  float* accum = nullptr;
  float moving_rate = 0.9f;
};
float moving_average_abs_max_update_cpu(const MovingAverageAbsMaxState& s, float abs_max);

// Paddle range_abs_max (per tensor): `window` holds the abs-max of the last window_size
// steps; `iter` (int64) counts the steps and is incremented by the update. Paddle's rule:
//   idx = iter % window_size; removed = window[idx]; window[idx] = cur
//   scale = max(scale, cur) if cur > scale, else if |removed - scale| < 1e-6 (the maximum
//   left the window) scale = max(0, |window[0 : min(iter, window_size)]|), NaN if any is NaN
// Returns the scale the quant-dequant uses: the updated *scale, or NaN for a non-finite abs_max
// or an out-of-contract iter < 0, either of which leaves window, iter and scale untouched (the
// CUDA launcher does the same; bindings reject iter < 0 up front on the CPU). iter + 1 does not
// overflow at INT64_MAX (range_abs_max_next_iter).
struct RangeAbsMaxState {
  float* scale = nullptr;
  float* window = nullptr;
  int64_t window_size = 1;
  int64_t* iter = nullptr;
};
float range_abs_max_update_cpu(const RangeAbsMaxState& s, float abs_max);

// PyTorch's moving-average min/max observer fused with the choice of qparams
// (torch.fused_moving_avg_obs_fake_quant): per channel (or for the tensor, channels == 1)
//   if observer_on: running_min/max = moving_average_min_max(running, current, c)
//   if fake_quant_on: (scale, zero_point) = choose_qparams(running_min, running_max, ...)
// observer_on / fake_quant_on point to one int64 each.
struct MovingAverageMinMaxState {
  const int64_t* observer_on = nullptr;
  const int64_t* fake_quant_on = nullptr;
  float* running_min = nullptr;  // [channels]
  float* running_max = nullptr;  // [channels]
  float* scale = nullptr;        // [channels]
  int32_t* zero_point = nullptr;  // [channels]
  int64_t channels = 1;
  float averaging_const = 0.01f;
  int32_t quant_min = -128;  // the range in force (reduce_range already applied by the caller)
  int32_t quant_max = 127;
  bool symmetric = false;
};
// `current_min` / `current_max`: this step's per-channel min and max (ignored when the
// observer is off or `observe` is false, e.g. for an empty input). A channel whose step is not
// applied (moving_average_min_max_step) keeps its running values and gets rejected[c] = 1
// (`rejected`, [channels], may be null): the caller poisons that channel's quant-dequant.
void moving_average_min_max_update_cpu(const MovingAverageMinMaxState& s, const float* current_min,
                                       const float* current_max, bool observe, uint8_t* rejected = nullptr);

// The quant-dequant of the fused moving-average min/max observer, with the state's range and
// switch: per tensor (s.channels == 1) or per channel along channel_stride, reading the scale
// and the integer zero point given (the state's or a step's own copy of them).
template <typename QParams>
QParams min_max_qparams(const MovingAverageMinMaxState& s, const float* scale, const int32_t* zero_point,
                        Rounding rounding) {
  QParams qp;
  qp.scale = scale;
  qp.zero_point = zero_point;
  qp.quant_min = s.quant_min;
  qp.quant_max = s.quant_max;
  qp.rounding = rounding;
  qp.enabled = s.fake_quant_on;
  return qp;
}

inline PerTensorQParams min_max_per_tensor_qparams(const MovingAverageMinMaxState& s, const float* scale,
                                                   const int32_t* zero_point, Rounding rounding) {
  return min_max_qparams<PerTensorQParams>(s, scale, zero_point, rounding);
}

inline PerChannelQParams min_max_per_channel_qparams(const MovingAverageMinMaxState& s, const float* scale,
                                                     const int32_t* zero_point, int64_t channel_stride,
                                                     Rounding rounding) {
  PerChannelQParams qp = min_max_qparams<PerChannelQParams>(s, scale, zero_point, rounding);
  qp.zero_point_type = ZeroPointType::kInt32;
  qp.channels = s.channels;
  qp.channel_stride = channel_stride;
  return qp;
}

}  // namespace fakequant
