// The device-neutral body of the reduction (abs_max, min_max) and fused-observer ops:
// argument checks, allocation and the op functions, over a backend table (ObserverBackend)
// that cpu/observers.cpp and cuda/observers.cpp fill and register with
// ObserverOps<backend>::register_all (same rules, same messages on every backend).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

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

// What a backend does once a call is checked and its outputs allocated (under a device guard
// of input's device). `host_values`: the backend reads tensor values on the host (the CPU), so
// the incoming state values are checked before it runs; elsewhere they stay on the device.
struct ObserverBackend {
  bool host_values;
  void (*reduce)(ReduceCall& call, ReduceKind kind);
  void (*moving_average_abs_max)(MovingAverageAbsMaxCall& call, bool training);
  void (*range_abs_max)(RangeAbsMaxCall& call, bool training);
  void (*moving_average_min_max)(MovingAverageMinMaxCall& call, bool per_tensor);
};

template <const ObserverBackend& B>
struct ObserverOps {
  static at::Tensor abs_max(const at::Tensor& input, c10::optional<int64_t> axis) {
    ReduceCall call = prepare_reduce("fakequant.abs_max", input, axis, ReduceKind::kAbsMax);
    const c10::OptionalDeviceGuard guard(input.device());
    B.reduce(call, ReduceKind::kAbsMax);
    return call.out_a;
  }
  static std::tuple<at::Tensor, at::Tensor> min_max(const at::Tensor& input, c10::optional<int64_t> axis) {
    ReduceCall call = prepare_reduce("fakequant.min_max", input, axis, ReduceKind::kMinMax);
    const c10::OptionalDeviceGuard guard(input.device());
    B.reduce(call, ReduceKind::kMinMax);
    return {call.out_a, call.out_b};
  }
  static std::tuple<at::Tensor, at::Tensor> moving_average_abs_max(const at::Tensor& input, at::Tensor& scale,
                                                                   at::Tensor& state, at::Tensor& accum,
                                                                   double moving_rate, int64_t bits, bool training,
                                                                   c10::string_view rounding) {
    MovingAverageAbsMaxCall call =
        prepare_moving_average_abs_max(input, scale, state, accum, moving_rate, bits, rounding);
    if (B.host_values) {
      check_abs_max_state_values("fakequant.fake_quant_moving_average_abs_max",
                                 {{&scale, "scale"}, {&state, "state"}, {&accum, "accum"}});
    }
    const c10::OptionalDeviceGuard guard(input.device());
    B.moving_average_abs_max(call, training);
    return {call.output, call.mask};
  }
  static std::tuple<at::Tensor, at::Tensor> range_abs_max(const at::Tensor& input, at::Tensor& scale,
                                                          at::Tensor& window, at::Tensor& iter, int64_t bits,
                                                          bool training, c10::string_view rounding) {
    RangeAbsMaxCall call = prepare_range_abs_max(input, scale, window, iter, bits, rounding);
    if (B.host_values) {
      check_abs_max_state_values("fakequant.fake_quant_range_abs_max", {{&scale, "scale"}, {&window, "window"}});
      TORCH_CHECK(*call.state.iter >= 0, "fakequant.fake_quant_range_abs_max: iter must be >= 0, got ",
                  *call.state.iter);
    }
    const c10::OptionalDeviceGuard guard(input.device());
    B.range_abs_max(call, training);
    return {call.output, call.mask};
  }
  static std::tuple<at::Tensor, at::Tensor> fused_moving_avg_obs_fake_quant(
      const at::Tensor& input, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
      at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point,
      double averaging_const, int64_t quant_min, int64_t quant_max, c10::optional<int64_t> axis, bool symmetric,
      bool reduce_range, c10::string_view rounding) {
    MovingAverageMinMaxCall call = prepare_moving_average_min_max(
        input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const, quant_min,
        quant_max, axis, symmetric, reduce_range, rounding);
    if (B.host_values) check_min_max_state_values(call);
    if (call.state.channels == 0) return {call.output, call.mask};  // empty along the axis: nothing to do
    const c10::OptionalDeviceGuard guard(input.device());
    B.moving_average_min_max(call, !axis.has_value());
    return {call.output, call.mask};
  }
  static void register_all(torch::Library& m) {
    m.impl("abs_max", &abs_max);
    m.impl("min_max", &min_max);
    m.impl("fake_quant_moving_average_abs_max", &moving_average_abs_max);
    m.impl("fake_quant_range_abs_max", &range_abs_max);
    m.impl("fused_moving_avg_obs_fake_quant", &fused_moving_avg_obs_fake_quant);
  }
};

}  // namespace ext
}  // namespace fakequant
