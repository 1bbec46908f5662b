// CPU kernels of the learnable-qparam (LSQ / LSQ+) ops: validate (values included), run the
// CPU reference on ATen's intra-op threads. The backward's chunks are fixed by the data
// alone, so grad_scale / grad_zero_point do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "../common.h"
#include "../learnable.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

at::Tensor learnable_forward(const char* op, const at::Tensor& input, const at::Tensor& scale,
                             const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t quant_min,
                             int64_t quant_max, double grad_factor) {
  LearnableForwardCall call =
      prepare_learnable_forward(op, input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
  check_learnable_qparam_values(op, call.scale, call.zero_point, axis.has_value());
  if (call.args.numel == 0) return call.output;
  const LearnableQParams& lq = call.qparams;
  std::vector<float> scales(lq.channels);
  std::vector<int32_t> zero_points(lq.channels);
  learnable_forward_qparams(lq, scales.data(), zero_points.data());
  const FakeQuantArgs args{call.args.dtype, call.args.input, call.args.output, nullptr, call.args.numel};
  if (lq.channels == 1) {
    const PerTensorQParams qp{scales.data(), zero_points.data(), lq.quant_min, lq.quant_max, Rounding::kHalfEven};
    parallel_over_mask_groups(args.numel, [&](int64_t begin, int64_t end) {
      fake_quant_per_tensor_cpu_range(args, qp, begin, end);
    });
  } else {
    PerChannelQParams qp;
    qp.scale = scales.data();
    qp.zero_point = zero_points.data();
    qp.zero_point_type = ZeroPointType::kInt32;
    qp.channels = lq.channels;
    qp.channel_stride = lq.channel_stride;
    qp.quant_min = lq.quant_min;
    qp.quant_max = lq.quant_max;
    parallel_over_mask_groups(args.numel, [&](int64_t begin, int64_t end) {
      fake_quant_per_channel_cpu_range(args, qp, begin, end);
    });
  }
  return call.output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learnable_backward(
    const char* op, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t quant_min, int64_t quant_max,
    double grad_factor, std::array<bool, 3> output_mask) {
  LearnableBackwardCall call = prepare_learnable_backward(op, grad_output, input, scale, zero_point, axis, quant_min,
                                                          quant_max, grad_factor, output_mask);
  check_learnable_qparam_values(op, call.scale, call.zero_point, axis.has_value());
  const LearnableBackwardPlan plan = plan_learnable_backward_cpu(call.args, call.qparams);
  // Partial sums: [chunks][channels] doubles each, at most numel / 128 entries (+ one row).
  const size_t partial_entries = plan.reduce ? static_cast<size_t>(plan.chunks * plan.channels) : 0;
  std::vector<double> partial_scale(partial_entries), partial_zero_point(partial_entries);
  at::parallel_for(0, plan.chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double* ps = plan.reduce ? partial_scale.data() + k * plan.channels : nullptr;
      double* pz = plan.reduce ? partial_zero_point.data() + k * plan.channels : nullptr;
      learnable_backward_cpu_chunk(call.args, call.qparams, plan, k, ps, pz);
    }
  });
  if (plan.reduce) learnable_backward_cpu_finish(call.args, plan, partial_scale.data(), partial_zero_point.data());
  return {call.grad_input, call.grad_scale, call.grad_zero_point};
}

at::Tensor per_tensor_op(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                         int64_t quant_min, int64_t quant_max, double grad_factor) {
  return learnable_forward("fakequant.fake_quant_learnable_per_tensor", input, scale, zero_point, std::nullopt,
                           quant_min, quant_max, grad_factor);
}

at::Tensor per_channel_op(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                          int64_t axis, int64_t quant_min, int64_t quant_max, double grad_factor) {
  return learnable_forward("fakequant.fake_quant_learnable_per_channel", input, scale, zero_point, axis, quant_min,
                           quant_max, grad_factor);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> per_tensor_backward_op(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t quant_min, int64_t quant_max, double grad_factor, const c10::List<bool>& output_mask) {
  return learnable_backward("fakequant.fake_quant_learnable_per_tensor_backward", grad_output, input, scale,
                            zero_point, std::nullopt, quant_min, quant_max, grad_factor,
                            learnable_output_mask("fakequant.fake_quant_learnable_per_tensor_backward", output_mask));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> per_channel_backward_op(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t axis, int64_t quant_min, int64_t quant_max, double grad_factor, const c10::List<bool>& output_mask) {
  return learnable_backward("fakequant.fake_quant_learnable_per_channel_backward", grad_output, input, scale,
                            zero_point, axis, quant_min, quant_max, grad_factor,
                            learnable_output_mask("fakequant.fake_quant_learnable_per_channel_backward", output_mask));
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) {
  m.impl("fake_quant_learnable_per_tensor", &per_tensor_op);
  m.impl("fake_quant_learnable_per_tensor_backward", &per_tensor_backward_op);
  m.impl("fake_quant_learnable_per_channel", &per_channel_op);
  m.impl("fake_quant_learnable_per_channel_backward", &per_channel_backward_op);
}

}  // namespace ext
}  // namespace fakequant
