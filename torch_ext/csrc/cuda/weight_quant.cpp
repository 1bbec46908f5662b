// CUDA backend of fake_quant_weight_abs_max (the op body: weight_quant.h): guard the device,
// launch on the current stream, check the launch. The scales never leave the device (no host
// sync).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../weight_quant.h"
#include "fakequant/cuda/weight_quant.h"

namespace fakequant {
namespace ext {
namespace {

void weight_abs_max(WeightAbsMaxCall& call) {
  const c10::cuda::CUDAGuard guard(call.weight.device());
  // The two-pass path reads per-channel zero points: int32 zeros on the device, allocated
  // (and zeroed on the stream) only when that path is taken.
  at::Tensor zero_points;
  if (!cuda::weight_abs_max_one_pass(call.args)) {
    zero_points = at::zeros({call.args.channels}, call.weight.options().dtype(at::kInt));
  }
  C10_CUDA_CHECK(cuda::launch_fake_quant_weight_abs_max(
      call.args, zero_points.defined() ? zero_points.const_data_ptr<int32_t>() : nullptr,
      c10::cuda::getCurrentCUDAStream().stream()));
}

constexpr WeightQuantBackend kCuda{&weight_abs_max};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) { WeightQuantOps<kCuda>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
