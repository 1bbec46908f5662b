// CUDA backend of fake_quant_block (the op body: block_quant.h): guard the device, launch both
// passes on the current stream, check the launch. The tensor abs-max stays on the device (no
// host sync).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../block_quant.h"
#include "fakequant/cuda/block_quant.h"

namespace fakequant {
namespace ext {
namespace {

void block_quant(BlockQuantCall& call) {
  const c10::cuda::CUDAGuard guard(call.input.device());
  C10_CUDA_CHECK(cuda::launch_block_quant(call.args, c10::cuda::getCurrentCUDAStream().stream()));
}

constexpr BlockQuantBackend kCuda{&block_quant};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) { BlockQuantOps<kCuda>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
