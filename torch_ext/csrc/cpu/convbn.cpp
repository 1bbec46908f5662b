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

constexpr ConvBnBackend kCpuBackend{moments, grad_sums, epilogue, backward, fold, weight_grad, convbn_channels_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) { ConvBnOps<kCpuBackend>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
