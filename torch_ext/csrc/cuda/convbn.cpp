// CUDA kernels of conv_bn_fake_quant and its backward: the shared sequence of
// torch_ext/csrc/convbn.cpp with the CUDA launchers, on the current stream, under a device
// guard, every launch checked. Nothing is read back to the host: the per-channel state,
// running statistics and parameters stay on the device (CUDA-graph capturable).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../convbn.h"
#include "fakequant/cuda/convbn.h"

namespace fakequant {
namespace ext {
namespace {

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Partial sums of the two-stage reductions, from the caching allocator (stream-ordered).
at::Tensor workspace(const ActivationLayout& layout) {
  const auto bytes = static_cast<int64_t>(cuda::channel_sums_workspace_bytes(layout));
  return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, c10::cuda::current_device()));
}

void moments(const ChannelMomentsArgs& a) {
  const at::Tensor ws = workspace(a.layout);
  C10_CUDA_CHECK(cuda::launch_channel_moments(a, ws.mutable_data_ptr(), stream()));
}

void grad_sums(const ChannelGradSumsArgs& a) {
  const at::Tensor ws = workspace(a.layout);
  C10_CUDA_CHECK(cuda::launch_channel_grad_sums(a, ws.mutable_data_ptr(), stream()));
}

void epilogue(const ConvBnEpilogueArgs& a) { C10_CUDA_CHECK(cuda::launch_convbn_epilogue(a, stream())); }
void backward(const ConvBnBackwardArgs& a) { C10_CUDA_CHECK(cuda::launch_convbn_backward(a, stream())); }
void fold(const FoldWeightArgs& a) { C10_CUDA_CHECK(cuda::launch_fold_weight(a, stream())); }
void weight_grad(const WeightGradArgs& a) { C10_CUDA_CHECK(cuda::launch_weight_grad(a, stream())); }
void channels(const ConvBnChannelArgs& a) { C10_CUDA_CHECK(cuda::launch_convbn_channels(a, stream())); }

constexpr ConvBnBackend kCudaBackend{moments, grad_sums, epilogue, backward, fold, weight_grad, channels};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) { ConvBnOps<kCudaBackend>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
