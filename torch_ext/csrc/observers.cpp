#include "observers.h"

#include <cmath>
#include <string>
#include <utility>

namespace fakequant {
namespace ext {
namespace {

// Channel count (possibly 0) and memory stride of `axis` in the dense tensor `x` (a size-1
// axis may have any stride: use 1).
std::pair<int64_t, int64_t> channel_geometry(const at::Tensor& x, int64_t ax) {
  const int64_t channels = x.size(ax);
  return {channels, channels > 1 ? x.stride(ax) : 1};
}

void check_state_tensor(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& input,
                        at::ScalarType want, int64_t numel, const char* numel_rule) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", arg, " must be a ", want, " tensor, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == numel, op, ": ", arg, " must have ", numel_rule, " (", numel, " elements), got shape ",
              t.sizes());
  TORCH_CHECK(t.device() == input.device(), op, ": ", arg, " must be on the same device as input (", input.device(),
              "), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous (it is updated in place)");
  TORCH_CHECK(is_aligned(t), op, ": ", arg, " must be aligned to its element size (", t.element_size(),
              " bytes; it is updated in place)");
}

// The observers take the deterministic roundings only (stochastic rounding needs a seed tensor,
// which the quant-dequant ops take).
Rounding deterministic_rounding(const char* op, int64_t quant_min, int64_t quant_max, c10::string_view rounding) {
  const Rounding mode = check_range_and_rounding(op, quant_min, quant_max, rounding);
  TORCH_CHECK(mode != Rounding::kStochastic, op,
              ": rounding must be 'half_even' or 'half_away' (stochastic rounding is offered by "
              "fake_quant_per_tensor / fake_quant_per_channel), got 'stochastic'");
  return mode;
}

void check_bits(const char* op, int64_t bits) {
  TORCH_CHECK(bits >= 2 && bits <= 16, op, ": bits must lie in [2, 16], got ", bits);
}

// What the two abs-max observers check and fill alike once their state tensors are checked:
// bits, the rounding (over the range [-bin_cnt, bin_cnt] the bits give), the outputs and the
// scale they update.
template <typename Call>
void prepare_abs_max_common(const char* op, Call& call, const at::Tensor& input, DType dtype, const at::Tensor& scale,
                            int64_t bits, c10::string_view rounding) {
  check_bits(op, bits);
  call.bits = static_cast<int32_t>(bits);
  const int32_t bin_cnt = abs_max_bin_cnt(call.bits);
  call.rounding = deterministic_rounding(op, -bin_cnt, bin_cnt, rounding);
  static_cast<FakeQuantBuffers&>(call) = allocate_fake_quant_buffers(input, dtype);
  call.state.scale = scale.mutable_data_ptr<float>();
}

}  // namespace

ReduceCall prepare_reduce(const char* op, const at::Tensor& input, c10::optional<int64_t> axis, ReduceKind kind) {
  ReduceCall call;
  call.args.dtype = to_dtype(input, op, "input");
  call.input = dense_or_contiguous(input);
  call.args.input = call.input.const_data_ptr();
  call.args.numel = call.input.numel();
  at::IntArrayRef shape{};
  std::vector<int64_t> channel_shape;
  if (axis.has_value()) {
    const int64_t ax = normalize_axis(op, input, *axis);
    std::tie(call.args.channels, call.args.channel_stride) = channel_geometry(call.input, ax);
    channel_shape = {input.size(ax)};
  }
  const auto opts = call.input.options().dtype(at::kFloat);
  call.out_a = at::empty(channel_shape, opts);
  if (kind == ReduceKind::kMinMax) call.out_b = at::empty(channel_shape, opts);
  return call;
}

MovingAverageAbsMaxCall prepare_moving_average_abs_max(const at::Tensor& input, const at::Tensor& scale,
                                                       const at::Tensor& state, const at::Tensor& accum,
                                                       double moving_rate, int64_t bits, c10::string_view rounding) {
  constexpr const char* op = "fakequant.fake_quant_moving_average_abs_max";
  MovingAverageAbsMaxCall call;
  const DType dtype = to_dtype(input, op, "input");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{scale, "scale"}, {state, "state"},
                                {accum, "accum"}}) {
    check_state_tensor(op, name, t, input, at::kFloat, 1, "exactly one element");
  }
  check_no_overlap(op, {{&scale, "scale"}, {&state, "state"}, {&accum, "accum"}}, {{&input, "input"}});
  TORCH_CHECK(std::isfinite(moving_rate) && moving_rate >= 0.0 && moving_rate < 1.0, op,
              ": moving_rate must lie in [0, 1), got ", moving_rate);
  prepare_abs_max_common(op, call, input, dtype, scale, bits, rounding);
  call.state.state = state.mutable_data_ptr<float>();
  call.state.accum = accum.mutable_data_ptr<float>();
  call.state.moving_rate = static_cast<float>(moving_rate);
  return call;
}

RangeAbsMaxCall prepare_range_abs_max(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& window,
                                      const at::Tensor& iter, int64_t bits, c10::string_view rounding) {
  constexpr const char* op = "fakequant.fake_quant_range_abs_max";
  RangeAbsMaxCall call;
  const DType dtype = to_dtype(input, op, "input");
  check_state_tensor(op, "scale", scale, input, at::kFloat, 1, "exactly one element");
  TORCH_CHECK(window.dim() == 1 && window.numel() >= 1, op,
              ": window must be a 1-D tensor of window_size >= 1 elements, got shape ", window.sizes());
  check_state_tensor(op, "window", window, input, at::kFloat, window.numel(), "window_size elements");
  check_state_tensor(op, "iter", iter, input, at::kLong, 1, "exactly one element");
  check_no_overlap(op, {{&scale, "scale"}, {&window, "window"}, {&iter, "iter"}}, {{&input, "input"}});
  prepare_abs_max_common(op, call, input, dtype, scale, bits, rounding);
  call.state.window = window.mutable_data_ptr<float>();
  call.state.window_size = window.numel();
  call.state.iter = iter.mutable_data_ptr<int64_t>();
  return call;
}

MovingAverageMinMaxCall prepare_moving_average_min_max(const at::Tensor& input, const at::Tensor& observer_on,
                                                       const at::Tensor& fake_quant_on, const at::Tensor& running_min,
                                                       const at::Tensor& running_max, const at::Tensor& scale,
                                                       const at::Tensor& zero_point, double averaging_const,
                                                       int64_t quant_min, int64_t quant_max,
                                                       c10::optional<int64_t> axis, bool symmetric, bool reduce_range,
                                                       c10::string_view rounding) {
  constexpr const char* op = "fakequant.fused_moving_avg_obs_fake_quant";
  MovingAverageMinMaxCall call;
  const DType dtype = to_dtype(input, op, "input");
  check_state_tensor(op, "observer_on", observer_on, input, at::kLong, 1, "exactly one element");
  check_state_tensor(op, "fake_quant_on", fake_quant_on, input, at::kLong, 1, "exactly one element");
  int64_t channels = 1;
  int64_t ax = -1;
  if (axis.has_value()) {
    ax = normalize_axis(op, input, *axis);
    channels = input.size(ax);
  }
  const char* rule = axis.has_value() ? "input.size(axis) elements" : "exactly one element (per-tensor)";
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{running_min, "running_min"},
                                {running_max, "running_max"}, {scale, "scale"}}) {
    check_state_tensor(op, name, t, input, at::kFloat, channels, rule);
  }
  check_state_tensor(op, "zero_point", zero_point, input, at::kInt, channels, rule);
  check_no_overlap(op,
                   {{&running_min, "running_min"}, {&running_max, "running_max"}, {&scale, "scale"},
                    {&zero_point, "zero_point"}},
                   {{&input, "input"}, {&observer_on, "observer_on"}, {&fake_quant_on, "fake_quant_on"}});
  TORCH_CHECK(std::isfinite(averaging_const) && averaging_const >= 0.0 && averaging_const <= 1.0, op,
              ": averaging_const must lie in [0, 1], got ", averaging_const);
  call.rounding = deterministic_rounding(op, quant_min, quant_max, rounding);
  // reduce_range halves the range as ATen's ChooseQuantizationParams does (C++ division).
  const int64_t qmin = reduce_range ? quant_min / 2 : quant_min;
  const int64_t qmax = reduce_range ? quant_max / 2 : quant_max;
  TORCH_CHECK(qmin < qmax, op, ": the range [quant_min, quant_max] must hold at least 2 levels", 
              reduce_range ? " after reduce_range halves it" : "", ", got [", qmin, ", ", qmax, "]");

  static_cast<FakeQuantBuffers&>(call) = allocate_fake_quant_buffers(input, dtype);
  if (ax >= 0) call.channel_stride = channel_geometry(call.input, ax).second;
  MovingAverageMinMaxState& s = call.state;
  s.observer_on = observer_on.const_data_ptr<int64_t>();
  s.fake_quant_on = fake_quant_on.const_data_ptr<int64_t>();
  s.running_min = running_min.mutable_data_ptr<float>();
  s.running_max = running_max.mutable_data_ptr<float>();
  s.scale = scale.mutable_data_ptr<float>();
  s.zero_point = zero_point.mutable_data_ptr<int32_t>();
  s.channels = channels;
  s.averaging_const = static_cast<float>(averaging_const);
  s.quant_min = static_cast<int32_t>(qmin);
  s.quant_max = static_cast<int32_t>(qmax);
  s.symmetric = symmetric;
  return call;
}

void check_abs_max_state_values(const char* op, std::initializer_list<std::pair<const at::Tensor*, const char*>> ts) {
  for (const auto& [t, name] : ts) {
    const float* p = t->const_data_ptr<float>();
    for (int64_t i = 0; i < t->numel(); ++i) {
      TORCH_CHECK(std::isfinite(p[i]) && p[i] >= 0.0f, op, ": ", name, t->numel() > 1 ? "[" + std::to_string(i) + "]" : "",
                  " must be finite and >= 0, got ", p[i]);
    }
  }
}

void check_min_max_state_values(const MovingAverageMinMaxCall& call) {
  constexpr const char* op = "fakequant.fused_moving_avg_obs_fake_quant";
  const MovingAverageMinMaxState& s = call.state;
  for (int64_t c = 0; c < s.channels; ++c) {
    TORCH_CHECK(!std::isnan(s.running_min[c]) && !std::isnan(s.running_max[c]), op, ": running_min / running_max",
                s.channels > 1 ? " of channel " + std::to_string(c) : "", " must not be NaN");
  }
}

}  // namespace ext
}  // namespace fakequant
