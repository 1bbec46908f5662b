// CUDA kernels of conv_bn_fake_quant and its backward: the shared sequence of
// torch_ext/csrc/convbn.cpp with the CUDA launchers, on the current stream, under a device
// guard, every launch checked. Nothing is read back to the host: the per-channel state,
// running statistics and parameters stay on the device (CUDA-graph capturable).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
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

const ConvBnBackend kCudaBackend{moments, grad_sums, epilogue, backward, fold, weight_grad, channels};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, at::Tensor& running_mean, at::Tensor& running_var,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, double eps,
    double momentum, c10::string_view mode, bool training, bool relu, bool quantize_weight, int64_t quant_min,
    int64_t quant_max, c10::string_view rounding, double weight_eps) {
  const c10::cuda::CUDAGuard guard(input.device());
  return conv_bn_fake_quant_forward(kCudaBackend, input, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                    stride, padding, dilation, groups, eps, momentum, mode, training, relu,
                                    quantize_weight, quant_min, quant_max, rounding, weight_eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& pre_bn,
    const at::Tensor& weight_q, const at::Tensor& weight_mask, const at::Tensor& relu_mask,
    const at::Tensor& channel_state, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, c10::string_view mode, bool training, const c10::List<bool>& output_mask) {
  const std::array<bool, 3> flags = conv_bn_output_mask(output_mask);
  const c10::cuda::CUDAGuard guard(input.device());
  return conv_bn_fake_quant_backward(kCudaBackend, grad_output, input, weight, pre_bn, weight_q, weight_mask,
                                     relu_mask, channel_state, stride, padding, dilation, groups, mode, training,
                                     flags);
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) {
  m.impl("conv_bn_fake_quant", &forward_cuda);
  m.impl("conv_bn_fake_quant_backward", &backward_cuda);
}

}  // namespace ext
}  // namespace fakequant
