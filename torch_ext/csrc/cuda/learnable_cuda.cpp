// CUDA kernels of the learnable-qparam (LSQ / LSQ+) ops: validate, guard the device, launch
// on the current stream, check the launch. Qparam values stay on the device (no host
// synchronisation); out-of-contract values poison what they govern with NaN
// (docs/numerics.md). The backward's small workspace comes from the caching allocator.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../common.h"
#include "../learnable.h"
#include "fakequant/cuda/learnable.h"

namespace fakequant {
namespace ext {
namespace {

at::Tensor learnable_forward(const char* op, const at::Tensor& input, const at::Tensor& scale,
                             const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t quant_min,
                             int64_t quant_max, double grad_factor) {
  // Checks first (a CPU input with CUDA qparams lands here too), then the guard.
  LearnableForwardCall call =
      prepare_learnable_forward(op, input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(
      cuda::launch_fake_quant_learnable(call.args, call.qparams, c10::cuda::getCurrentCUDAStream().stream()));
  return call.output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learnable_backward(
    const char* op, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale,
    const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t quant_min, int64_t quant_max,
    double grad_factor, std::array<bool, 3> output_mask) {
  LearnableBackwardCall call = prepare_learnable_backward(op, grad_output, input, scale, zero_point, axis, quant_min,
                                                          quant_max, grad_factor, output_mask);
  const c10::cuda::CUDAGuard guard(input.device());
  const size_t bytes = cuda::learnable_backward_workspace_bytes(call.args, call.qparams);
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>((bytes + sizeof(double) - 1) / sizeof(double))},
                call.input.options().dtype(at::kDouble));
  C10_CUDA_CHECK(cuda::launch_fake_quant_learnable_backward(call.args, call.qparams, workspace.data_ptr(), bytes,
                                                            c10::cuda::getCurrentCUDAStream().stream()));
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

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) {
  m.impl("fake_quant_learnable_per_tensor", &per_tensor_op);
  m.impl("fake_quant_learnable_per_tensor_backward", &per_tensor_backward_op);
  m.impl("fake_quant_learnable_per_channel", &per_channel_op);
  m.impl("fake_quant_learnable_per_channel_backward", &per_channel_backward_op);
}

}  // namespace ext
}  // namespace fakequant
