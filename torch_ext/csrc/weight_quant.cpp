#include "weight_quant.h"

#include <algorithm>
#include <string>

#include "common.h"

namespace fakequant {
namespace ext {

WeightAbsMaxCall prepare_fake_quant_weight_abs_max(const at::Tensor& weight, int64_t axis, int64_t quant_min,
                                                   int64_t quant_max, c10::string_view rounding, double eps) {
  constexpr const char* op = "fakequant.fake_quant_weight_abs_max";
  const DType dtype = to_dtype(weight, op, "weight");
  const int64_t dim = weight.dim();
  TORCH_CHECK(dim >= 1, op, ": weight must have at least 1 dimension for per-channel quantization, got a 0-d tensor");
  TORCH_CHECK(axis >= -dim && axis < dim, op, ": axis must lie in [", -dim, ", ", dim - 1, "] for a ", dim,
              "-d weight, got ", axis);
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

  const int64_t ax = axis < 0 ? axis + dim : axis;
  const int64_t channels = weight.size(ax);
  WeightAbsMaxCall call;
  call.weight = dense_or_contiguous(weight);
  call.output = at::empty_like(call.weight);
  call.mask = at::empty({mask_bytes(call.weight.numel())}, call.weight.options().dtype(at::kByte));
  call.scale = at::empty({channels}, call.weight.options().dtype(at::kFloat));
  WeightAbsMaxArgs& a = call.args;
  a.dtype = dtype;
  a.weight = call.weight.const_data_ptr();
  a.output = call.output.mutable_data_ptr();
  a.mask = call.mask.mutable_data_ptr<uint8_t>();
  a.scale = call.scale.mutable_data_ptr<float>();
  a.numel = call.weight.numel();
  a.channels = channels;
  // As for fake_quant_per_channel: the channel of memory offset i is (i / stride(axis)) % C;
  // a size-1 axis' stride is arbitrary, and one channel needs none.
  a.channel_stride = channels > 1 ? call.weight.stride(ax) : 1;
  a.quant_min = static_cast<int32_t>(quant_min);
  a.quant_max = static_cast<int32_t>(quant_max);
  a.eps = static_cast<float>(eps);
  a.rounding = mode;
  return call;
}

}  // namespace ext
}  // namespace fakequant
