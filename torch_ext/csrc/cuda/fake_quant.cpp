// CUDA backend of the quant-dequant family (the op bodies: fake_quant.h): guard the device,
// launch on the current stream, check the launch. Qparam values stay on the device (no host
// synchronisation); out-of-contract values there poison the output with NaN (docs/numerics.md).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../fake_quant.h"
#include "fakequant/cuda/launch.h"

namespace fakequant {
namespace ext {
namespace {

// The checks came first (a CPU input with CUDA qparams lands here too), then the guard; the
// outputs were allocated on input's device whatever the current device is.
void per_tensor(PerTensorCall& call, int64_t, int64_t) {
  const c10::cuda::CUDAGuard guard(call.input.device());
  C10_CUDA_CHECK(
      cuda::launch_fake_quant_per_tensor(call.args, call.qparams, c10::cuda::getCurrentCUDAStream().stream()));
}

void per_channel(PerChannelCall& call, int64_t, int64_t) {
  const c10::cuda::CUDAGuard guard(call.input.device());
  C10_CUDA_CHECK(
      cuda::launch_fake_quant_per_channel(call.args, call.qparams, c10::cuda::getCurrentCUDAStream().stream()));
}

void mask_backward(MaskedGradCall& call) {
  const c10::cuda::CUDAGuard guard(call.grad_input.device());
  C10_CUDA_CHECK(cuda::launch_masked_grad(call.args, c10::cuda::getCurrentCUDAStream().stream()));
}

constexpr FakeQuantBackend kCuda{&per_tensor, &per_channel, &mask_backward};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) { FakeQuantOps<kCuda>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
