// CUDA launcher of block-scaled fake quantization (fakequant/block_quant.h). Launches on the
// given stream, never synchronises, returns the launch status. Pointers are device pointers;
// the caller has made the right device current.
#pragma once

#include <cuda_runtime_api.h>

#include "fakequant/block_quant.h"

namespace fakequant {
namespace cuda {

// Both passes: where block_quant_needs_tensor_amax(args), first the whole tensor's abs-max
// into args.tensor_amax (device memory, overwritten: the launcher initialises it), then the
// tiles. Returns cudaErrorInvalidValue, having written nothing, when
// check_block_quant_args(args) rejects the arguments. An empty tensor is a no-op.
cudaError_t launch_block_quant(const BlockQuantArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
