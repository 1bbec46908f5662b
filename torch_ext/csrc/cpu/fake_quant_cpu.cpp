// CPU kernels of the fakequant ops: validate, split the mask groups across ATen's
// intra-op threads, call the CPU reference.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

std::tuple<at::Tensor, at::Tensor> fake_quant_per_tensor_cpu_op(const at::Tensor& input,
                                                                const at::Tensor& scale,
                                                                const at::Tensor& zero_point,
                                                                int64_t quant_min, int64_t quant_max,
                                                                c10::string_view rounding,
                                                                const std::optional<at::Tensor>& seed) {
  PerTensorCall call =
      prepare_fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding, seed);
  check_per_tensor_qparam_values(call.scale, call.zero_point, quant_min, quant_max);
  parallel_over_mask_groups(call.args.numel, [&](int64_t begin, int64_t end) {
    fake_quant_per_tensor_cpu_range(call.args, call.qparams, begin, end);
  });
  return {call.output, call.mask};
}

std::tuple<at::Tensor, at::Tensor> fake_quant_per_channel_cpu_op(const at::Tensor& input,
                                                                 const at::Tensor& scale,
                                                                 const at::Tensor& zero_point, int64_t axis,
                                                                 int64_t quant_min, int64_t quant_max,
                                                                 c10::string_view rounding,
                                                                 const std::optional<at::Tensor>& seed) {
  PerChannelCall call =
      prepare_fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
  check_per_channel_qparam_values(call.scale, call.zero_point, quant_min, quant_max);
  parallel_over_mask_groups(call.args.numel, [&](int64_t begin, int64_t end) {
    fake_quant_per_channel_cpu_range(call.args, call.qparams, begin, end);
  });
  return {call.output, call.mask};
}

at::Tensor fake_quant_mask_backward_cpu_op(const at::Tensor& grad_output, const at::Tensor& mask) {
  MaskedGradCall call = prepare_masked_grad(grad_output, mask);
  parallel_over_mask_groups(call.args.numel,
                   [&](int64_t begin, int64_t end) { masked_grad_cpu_range(call.args, begin, end); });
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) {
  m.impl("fake_quant_per_tensor", &fake_quant_per_tensor_cpu_op);
  m.impl("fake_quant_per_channel", &fake_quant_per_channel_cpu_op);
  m.impl("fake_quant_mask_backward", &fake_quant_mask_backward_cpu_op);
}

}  // namespace ext
}  // namespace fakequant
