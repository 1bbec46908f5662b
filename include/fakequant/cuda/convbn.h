// CUDA launchers of the ConvBN kernels (fakequant/convbn.h). Each launches on the given
// stream, never synchronises and returns the launch status. Pointers are device pointers
// (the per-channel parameters and running statistics included); the caller has made the right
// device current.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "fakequant/convbn.h"

namespace fakequant {
namespace cuda {

// Device memory the two-stage per-channel reductions need for their partial sums (no
// initialisation needed). The grid, and so the size, follows the current device's
// multiprocessor count: ask with the device current that the launch will use.
size_t channel_sums_workspace_bytes(const ActivationLayout& layout);

cudaError_t launch_channel_moments(const ChannelMomentsArgs& args, void* workspace, cudaStream_t stream);
cudaError_t launch_channel_grad_sums(const ChannelGradSumsArgs& args, void* workspace, cudaStream_t stream);
cudaError_t launch_convbn_epilogue(const ConvBnEpilogueArgs& args, cudaStream_t stream);
cudaError_t launch_convbn_backward(const ConvBnBackwardArgs& args, cudaStream_t stream);
cudaError_t launch_fold_weight(const FoldWeightArgs& args, cudaStream_t stream);
cudaError_t launch_weight_grad(const WeightGradArgs& args, cudaStream_t stream);
cudaError_t launch_convbn_channels(const ConvBnChannelArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
