// Argument checks and allocation of the reduction and fused-observer ops, shared by the
// CPU and CUDA bindings (same rules, same messages).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "common.h"
#include "fakequant/observers.h"

namespace fakequant {
namespace ext {

// abs_max / min_max: input made dense, ReduceArgs over it, float32 outputs of shape []
// (whole tensor) or [C] (along axis).
struct ReduceCall {
  at::Tensor input;
  ReduceArgs args;
  at::Tensor out_a, out_b;  // out_b only for min_max
};
ReduceCall prepare_reduce(const char* op, const at::Tensor& input, c10::optional<int64_t> axis, ReduceKind kind);

// Paddle moving_average_abs_max.
struct MovingAverageAbsMaxCall : FakeQuantBuffers {
  MovingAverageAbsMaxState state;
  int32_t bits;
  Rounding rounding;
};
MovingAverageAbsMaxCall prepare_moving_average_abs_max(const at::Tensor& input, const at::Tensor& scale,
                                                       const at::Tensor& state, const at::Tensor& accum,
                                                       double moving_rate, int64_t bits, c10::string_view rounding);

// Paddle range_abs_max.
struct RangeAbsMaxCall : FakeQuantBuffers {
  RangeAbsMaxState state;
  int32_t bits;
  Rounding rounding;
};
RangeAbsMaxCall prepare_range_abs_max(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& window,
                                      const at::Tensor& iter, int64_t bits, c10::string_view rounding);

// PyTorch's fused moving-average min/max observer.
struct MovingAverageMinMaxCall : FakeQuantBuffers {
  MovingAverageMinMaxState state;
  int64_t channel_stride = 1;
  Rounding rounding;
};
MovingAverageMinMaxCall prepare_moving_average_min_max(const at::Tensor& input, const at::Tensor& observer_on,
                                                       const at::Tensor& fake_quant_on, const at::Tensor& running_min,
                                                       const at::Tensor& running_max, const at::Tensor& scale,
                                                       const at::Tensor& zero_point, double averaging_const,
                                                       int64_t quant_min, int64_t quant_max,
                                                       c10::optional<int64_t> axis, bool symmetric, bool reduce_range,
                                                       c10::string_view rounding);

// Value checks of the incoming observer state, done where the values are on the host (the
// CPU): every state value must be finite (running min/max may also be the initial +-inf).
void check_abs_max_state_values(const char* op, std::initializer_list<std::pair<const at::Tensor*, const char*>> t);
void check_min_max_state_values(const MovingAverageMinMaxCall& call);

}  // namespace ext
}  // namespace fakequant
