// CUDA launchers of the fakequant kernel library. Each launches on the given stream,
// never synchronises, and returns the launch status (cudaGetLastError after the launch).
// Pointers are device pointers; the caller has made the right device current.
// numel == 0 is a no-op (cudaSuccess). Rejected with cudaErrorInvalidValue before anything is
// launched: numel < 0, an unknown dtype, rounding or zero-point type, Rounding::kStochastic
// without a seed, and per-channel channels or channel_stride <= 0.
#pragma once

#include <cuda_runtime_api.h>

#include "fakequant/fake_quant.h"

namespace fakequant {
namespace cuda {

cudaError_t launch_fake_quant_per_tensor(const FakeQuantArgs& args, const PerTensorQParams& qp,
                                         cudaStream_t stream);

cudaError_t launch_fake_quant_per_channel(const FakeQuantArgs& args, const PerChannelQParams& qp,
                                          cudaStream_t stream);

cudaError_t launch_masked_grad(const MaskedGradArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
