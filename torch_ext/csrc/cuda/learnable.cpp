// CUDA backend of the learnable-qparam (LSQ / LSQ+) ops (the op bodies: learnable.h): guard
// the device, launch on the current stream, check the launch. Qparam values stay on the device
// (no host synchronisation); out-of-contract values poison what they govern with NaN
// (docs/numerics.md). The backward's small workspace comes from the caching allocator.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../learnable.h"
#include "fakequant/cuda/learnable.h"

namespace fakequant {
namespace ext {
namespace {

void forward(const char*, LearnableForwardCall& call, bool) {
  // The checks came first (a CPU input with CUDA qparams lands here too), then the guard.
  const c10::cuda::CUDAGuard guard(call.input.device());
  C10_CUDA_CHECK(
      cuda::launch_fake_quant_learnable(call.args, call.qparams, c10::cuda::getCurrentCUDAStream().stream()));
}

void backward(const char*, LearnableBackwardCall& call, bool) {
  const c10::cuda::CUDAGuard guard(call.input.device());
  const size_t bytes = cuda::learnable_backward_workspace_bytes(call.args, call.qparams);
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>((bytes + sizeof(double) - 1) / sizeof(double))},
                call.input.options().dtype(at::kDouble));
  C10_CUDA_CHECK(cuda::launch_fake_quant_learnable_backward(call.args, call.qparams, workspace.data_ptr(), bytes,
                                                            c10::cuda::getCurrentCUDAStream().stream()));
}

constexpr LearnableBackend kCuda{&forward, &backward};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) { LearnableOps<kCuda>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
