// CPU kernels of conv_bn_fake_quant and its backward: the shared sequence of
// torch_ext/csrc/convbn.cpp with the CPU reference kernels, parallel over chunks of memory
// (reductions: one row of partial sums per chunk, merged in chunk order) or channels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../convbn.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

// Elements per chunk of the per-channel double sums (batch statistics, gradient sums): the
// chunking fixes their summation order, so it is not the elementwise grain of parallel.h.
constexpr int64_t kSumChunkElements = 65536;

int64_t chunk_count(int64_t numel) {
  return std::clamp<int64_t>(numel / kSumChunkElements, 1, std::max<int64_t>(1, at::get_num_threads()));
}

// Partial sums of `rows` rows of C doubles per chunk of memory, merged in chunk order.
template <typename F>
std::vector<double> chunked_sums(int64_t numel, int64_t width, F accumulate) {
  const int64_t chunks = chunk_count(numel);
  const int64_t len = (numel + chunks - 1) / chunks;
  std::vector<double> partial(static_cast<size_t>(chunks * width), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) accumulate(i * len, std::min(numel, (i + 1) * len), partial.data() + i * width);
  });
  for (int64_t i = 1; i < chunks; ++i)
    for (int64_t j = 0; j < width; ++j) partial[j] += partial[i * width + j];
  partial.resize(static_cast<size_t>(width));
  return partial;
}

void moments(const ChannelMomentsArgs& a) {
  const int64_t C = a.layout.channels;
  const std::vector<double> sums = chunked_sums(a.layout.numel(), 2 * C, [&](int64_t b, int64_t e, double* acc) {
    channel_moment_sums_cpu(a, b, e, acc, acc + C);
  });
  channel_moments_finish_cpu(a, sums.data(), sums.data() + C);
}

void grad_sums(const ChannelGradSumsArgs& a) {
  const int64_t C = a.layout.channels;
  const std::vector<double> sums = chunked_sums(a.layout.numel(), 2 * C, [&](int64_t b, int64_t e, double* acc) {
    channel_grad_sums_cpu_range(a, b, e, acc);
  });
  std::copy(sums.begin(), sums.end(), a.sums);
}

void epilogue(const ConvBnEpilogueArgs& a) {
  parallel_over_mask_groups(a.layout.numel(),
                   [&](int64_t begin, int64_t end) { convbn_epilogue_cpu_range(a, begin, end); });
}

void backward(const ConvBnBackwardArgs& a) {
  parallel_over_mask_groups(a.layout.numel(),
                   [&](int64_t begin, int64_t end) { convbn_backward_cpu_range(a, begin, end); });
}

int64_t channel_grain(int64_t length) { return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(length, 1)); }

void fold(const FoldWeightArgs& a) {
  at::parallel_for(0, a.channels, channel_grain(a.channel_length),
                   [&](int64_t begin, int64_t end) { fold_weight_cpu_range(a, begin, end); });
}

void weight_grad(const WeightGradArgs& a) {
  at::parallel_for(0, a.channels, channel_grain(a.channel_length),
                   [&](int64_t begin, int64_t end) { weight_grad_cpu_range(a, begin, end); });
}

const ConvBnBackend kCpuBackend{moments, grad_sums, epilogue, backward, fold, weight_grad, convbn_channels_cpu};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, at::Tensor& running_mean, at::Tensor& running_var,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, double eps,
    double momentum, c10::string_view mode, bool training, bool relu, bool quantize_weight, int64_t quant_min,
    int64_t quant_max, c10::string_view rounding, double weight_eps) {
  return conv_bn_fake_quant_forward(kCpuBackend, input, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                    stride, padding, dilation, groups, eps, momentum, mode, training, relu,
                                    quantize_weight, quant_min, quant_max, rounding, weight_eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& pre_bn,
    const at::Tensor& weight_q, const at::Tensor& weight_mask, const at::Tensor& relu_mask,
    const at::Tensor& channel_state, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, c10::string_view mode, bool training, const c10::List<bool>& output_mask) {
  return conv_bn_fake_quant_backward(kCpuBackend, grad_output, input, weight, pre_bn, weight_q, weight_mask, relu_mask,
                                     channel_state, stride, padding, dilation, groups, mode, training,
                                     conv_bn_output_mask(output_mask));
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) {
  m.impl("conv_bn_fake_quant", &forward_cpu);
  m.impl("conv_bn_fake_quant_backward", &backward_cpu);
}

}  // namespace ext
}  // namespace fakequant
