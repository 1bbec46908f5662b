// CUDA kernel of fake_quant_weight_abs_max: validate, guard the device, launch on the
// current stream, check the launch. The scales never leave the device (no host sync).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../weight_quant.h"
#include "fakequant/cuda/weight_quant.h"

namespace fakequant {
namespace ext {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_weight_abs_max_cuda_op(const at::Tensor& weight,
                                                                                int64_t axis, int64_t quant_min,
                                                                                int64_t quant_max,
                                                                                c10::string_view rounding, double eps) {
  WeightAbsMaxCall call = prepare_fake_quant_weight_abs_max(weight, axis, quant_min, quant_max, rounding, eps);
  const c10::cuda::CUDAGuard guard(weight.device());
  // The two-pass path reads per-channel zero points: int32 zeros on the device, allocated
  // (and zeroed on the stream) only when that path is taken.
  at::Tensor zero_points;
  if (!cuda::weight_abs_max_one_pass(call.args)) {
    zero_points = at::zeros({call.args.channels}, call.weight.options().dtype(at::kInt));
  }
  C10_CUDA_CHECK(cuda::launch_fake_quant_weight_abs_max(
      call.args, zero_points.defined() ? zero_points.const_data_ptr<int32_t>() : nullptr,
      c10::cuda::getCurrentCUDAStream().stream()));
  return {call.output, call.mask, call.scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) {
  m.impl("fake_quant_weight_abs_max", &fake_quant_weight_abs_max_cuda_op);
}

}  // namespace ext
}  // namespace fakequant
