#include "weight_quant.h"

#include <algorithm>
#include <string>
#include <vector>

#include "common.h"

namespace fakequant {
namespace ext {

namespace {

// The checks both ops share: a symmetric range, a deterministic rounding, eps.
Rounding check_symmetric_args(const char* op, int64_t quant_min, int64_t quant_max, c10::string_view rounding,
                              double eps) {
  const std::string range_error = check_quant_range(quant_min, quant_max);
  TORCH_CHECK(range_error.empty(), op, ": ", range_error);
  const std::string symmetric_error = check_symmetric_quant_range(quant_min, quant_max);
  TORCH_CHECK(symmetric_error.empty(), op, ": ", symmetric_error);
  Rounding mode{};
  // Deterministic roundings only: stochastic rounding needs a seed tensor, which the
  // quant-dequant ops take.
  TORCH_CHECK(parse_rounding(std::string(rounding), &mode) && mode != Rounding::kStochastic, op,
              ": rounding must be one of 'half_even', 'half_away', got '", std::string(rounding), "'");
  const std::string eps_error = check_eps_value(eps);
  TORCH_CHECK(eps_error.empty(), op, ": ", eps_error);
  return mode;
}

// Outputs for `weight` (dense), its channels (or groups) and where their scales go.
WeightAbsMaxCall allocate(const at::Tensor& weight, DType dtype, int64_t channels, int64_t channel_stride,
                          at::IntArrayRef scale_shape, int64_t quant_min, int64_t quant_max, Rounding mode,
                          double eps) {
  WeightAbsMaxCall call;
  call.weight = weight;
  call.output = at::empty_like(weight);
  call.mask = at::empty({mask_bytes(weight.numel())}, weight.options().dtype(at::kByte));
  call.scale = at::empty(scale_shape, weight.options().dtype(at::kFloat));
  WeightAbsMaxArgs& a = call.args;
  a.dtype = dtype;
  a.weight = weight.const_data_ptr();
  a.output = call.output.mutable_data_ptr();
  a.mask = call.mask.mutable_data_ptr<uint8_t>();
  a.scale = call.scale.mutable_data_ptr<float>();
  a.numel = weight.numel();
  a.channels = channels;
  a.channel_stride = channel_stride;
  a.quant_min = static_cast<int32_t>(quant_min);
  a.quant_max = static_cast<int32_t>(quant_max);
  a.eps = static_cast<float>(eps);
  a.rounding = mode;
  return call;
}

}  // namespace

WeightAbsMaxCall prepare_fake_quant_weight_abs_max(const at::Tensor& weight, int64_t axis, int64_t quant_min,
                                                   int64_t quant_max, c10::string_view rounding, double eps) {
  constexpr const char* op = "fakequant.fake_quant_weight_abs_max";
  const DType dtype = to_dtype(weight, op, "weight");
  const int64_t dim = weight.dim();
  TORCH_CHECK(dim >= 1, op, ": weight must have at least 1 dimension for per-channel quantization, got a 0-d tensor");
  TORCH_CHECK(axis >= -dim && axis < dim, op, ": axis must lie in [", -dim, ", ", dim - 1, "] for a ", dim,
              "-d weight, got ", axis);
  const Rounding mode = check_symmetric_args(op, quant_min, quant_max, rounding, eps);
  const int64_t ax = axis < 0 ? axis + dim : axis;
  const int64_t channels = weight.size(ax);
  const at::Tensor dense = dense_or_contiguous(weight);
  // As for fake_quant_per_channel: the channel of memory offset i is (i / stride(axis)) % C;
  // a size-1 axis' stride is arbitrary, and one channel needs none.
  return allocate(dense, dtype, channels, channels > 1 ? dense.stride(ax) : 1, {channels}, quant_min, quant_max,
                  mode, eps);
}

WeightAbsMaxCall prepare_fake_quant_per_group(const at::Tensor& input, int64_t group_size, int64_t quant_min,
                                              int64_t quant_max, c10::string_view rounding,
                                              std::optional<double> eps) {
  constexpr const char* op = "fakequant.fake_quant_per_group";
  const DType dtype = to_dtype(input, op, "input");
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension (groups run along the last), got a "
              "0-d tensor");
  const int64_t row = input.size(-1);
  TORCH_CHECK(group_size >= 1 && row % group_size == 0, op, ": group_size must be a positive divisor of the last "
              "dimension (", row, "), got ", group_size);
  // torch.finfo(dtype).smallest_normal, torchao's default.
  const double default_eps = dtype == DType::kFloat16 ? 6.103515625e-05 : 1.1754943508222875e-38;
  const double e = eps.value_or(default_eps);
  const Rounding mode = check_symmetric_args(op, quant_min, quant_max, rounding, e);
  std::vector<int64_t> scale_shape = input.sizes().vec();
  scale_shape.back() = row / group_size;
  const at::Tensor dense = input.contiguous();
  const int64_t groups = dense.numel() / group_size;
  WeightAbsMaxCall call =
      allocate(dense, dtype, groups, groups > 1 ? group_size : 1, scale_shape, quant_min, quant_max, mode, e);
  call.args.scale_dtype = dtype;
  return call;
}

}  // namespace ext
}  // namespace fakequant
