// The ConvBN op (conv_bn_fake_quant and its backward): argument checks and the sequence of
// convolutions (ATen) and kernels (fakequant/convbn.h), shared by the CPU and CUDA bindings.
// Each backend supplies its kernel launches in a ConvBnBackend table; everything else -
// checks, allocation, the order of the passes - is this one code path (docs/convbn.md).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "fakequant/convbn.h"

namespace fakequant {
namespace ext {

struct ConvBnBackend {
  void (*moments)(const ChannelMomentsArgs&);
  void (*grad_sums)(const ChannelGradSumsArgs&);
  void (*epilogue)(const ConvBnEpilogueArgs&);
  void (*backward)(const ConvBnBackwardArgs&);
  void (*fold)(const FoldWeightArgs&);
  void (*weight_grad)(const WeightGradArgs&);
  void (*channels)(const ConvBnChannelArgs&);
};

// (output, pre_bn, weight_q, weight_mask, relu_mask, channel_state); see schema.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_bn_fake_quant_forward(
    const ConvBnBackend& backend, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    at::Tensor& running_mean, at::Tensor& running_var, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, double momentum, c10::string_view fold_mode, bool training,
    bool relu, bool quantize_weight, int64_t quant_min, int64_t quant_max, c10::string_view rounding,
    double weight_eps);

// The backward's output_mask (grad_input, grad_weight, grad_params), checked to hold 3 flags.
std::array<bool, 3> conv_bn_output_mask(const c10::List<bool>& output_mask);

// (grad_input, grad_weight, grad_params [3, C] float64: gamma, beta, conv bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_bn_fake_quant_backward(
    const ConvBnBackend& backend, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& pre_bn, const at::Tensor& weight_q, const at::Tensor& weight_mask, const at::Tensor& relu_mask,
    const at::Tensor& channel_state, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, c10::string_view fold_mode, bool training, std::array<bool, 3> output_mask);

// The two ops for one backend, as the function pointers TORCH_LIBRARY_IMPL takes. The device
// guard is the generic one (a no-op on the CPU), so the backends hold only their launches.
template <const ConvBnBackend& B>
struct ConvBnOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
      const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
      const at::Tensor& bn_weight, const at::Tensor& bn_bias, at::Tensor& running_mean, at::Tensor& running_var,
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, double eps,
      double momentum, c10::string_view fold_mode, bool training, bool relu, bool quantize_weight, int64_t quant_min,
      int64_t quant_max, c10::string_view rounding, double weight_eps) {
    const c10::OptionalDeviceGuard guard(input.device());
    return conv_bn_fake_quant_forward(B, input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride,
                                      padding, dilation, groups, eps, momentum, fold_mode, training, relu,
                                      quantize_weight, quant_min, quant_max, rounding, weight_eps);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& pre_bn,
      const at::Tensor& weight_q, const at::Tensor& weight_mask, const at::Tensor& relu_mask,
      const at::Tensor& channel_state, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
      int64_t groups, c10::string_view fold_mode, bool training, const c10::List<bool>& output_mask) {
    const std::array<bool, 3> flags = conv_bn_output_mask(output_mask);
    const c10::OptionalDeviceGuard guard(input.device());
    return conv_bn_fake_quant_backward(B, grad_output, input, weight, pre_bn, weight_q, weight_mask, relu_mask,
                                       channel_state, stride, padding, dilation, groups, fold_mode, training, flags);
  }
  static void register_all(torch::Library& m) {
    m.impl("conv_bn_fake_quant", &forward);
    m.impl("conv_bn_fake_quant_backward", &backward);
  }
};

}  // namespace ext
}  // namespace fakequant
