// CUDA kernels of the fakequant ops: validate, guard the device, launch on the current
// stream, check the launch. Qparam values stay on the device (no host synchronisation);
// out-of-contract values there poison the output with NaN (docs/numerics.md).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common.h"
#include "fakequant/cuda/launch.h"

namespace fakequant {
namespace ext {
namespace {

std::tuple<at::Tensor, at::Tensor> fake_quant_per_tensor_cuda_op(const at::Tensor& input,
                                                                 const at::Tensor& scale,
                                                                 const at::Tensor& zero_point,
                                                                 int64_t quant_min, int64_t quant_max,
                                                                 c10::string_view rounding,
                                                                 const std::optional<at::Tensor>& seed) {
  // Checks first (a CPU input with CUDA qparams lands here too), then the guard; the
  // outputs are allocated on input's device whatever the current device is.
  PerTensorCall call =
      prepare_fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding, seed);
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(cuda::launch_fake_quant_per_tensor(call.args, call.qparams,
                                                    c10::cuda::getCurrentCUDAStream().stream()));
  return {call.output, call.mask};
}

std::tuple<at::Tensor, at::Tensor> fake_quant_per_channel_cuda_op(const at::Tensor& input,
                                                                  const at::Tensor& scale,
                                                                  const at::Tensor& zero_point, int64_t axis,
                                                                  int64_t quant_min, int64_t quant_max,
                                                                  c10::string_view rounding,
                                                                  const std::optional<at::Tensor>& seed) {
  PerChannelCall call =
      prepare_fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(cuda::launch_fake_quant_per_channel(call.args, call.qparams,
                                                     c10::cuda::getCurrentCUDAStream().stream()));
  return {call.output, call.mask};
}

at::Tensor fake_quant_mask_backward_cuda_op(const at::Tensor& grad_output, const at::Tensor& mask) {
  MaskedGradCall call = prepare_masked_grad(grad_output, mask);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  C10_CUDA_CHECK(cuda::launch_masked_grad(call.args, c10::cuda::getCurrentCUDAStream().stream()));
  return call.grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) {
  m.impl("fake_quant_per_tensor", &fake_quant_per_tensor_cuda_op);
  m.impl("fake_quant_per_channel", &fake_quant_per_channel_cuda_op);
  m.impl("fake_quant_mask_backward", &fake_quant_mask_backward_cuda_op);
}

}  // namespace ext
}  // namespace fakequant
