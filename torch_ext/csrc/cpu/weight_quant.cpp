// CPU backend of fake_quant_weight_abs_max (the op body: weight_quant.h): contiguous channels are reduced and quantised
// block by block while in cache, in parallel over blocks of channels; other layouts take two
// parallel passes (per-channel abs-max with per-chunk partial maxima, then the per-channel
// quant-dequant).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../weight_quant.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

void weight_abs_max(WeightAbsMaxCall& call) {
  const WeightAbsMaxArgs& a = call.args;

  if (weight_channels_contiguous(a)) {
    const int64_t len = weight_channel_length(a);
    const int64_t per_block = weight_channels_per_block(len);
    const int64_t blocks = (a.channels + per_block - 1) / per_block;
    const int64_t grain = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(per_block * len, 1));
    at::parallel_for(0, blocks, grain,
                     [&](int64_t begin, int64_t end) { fake_quant_weight_abs_max_cpu_blocks(a, begin, end); });
    return;
  }

  // Pass 1: each chunk of memory reduces into its own row of partial maxima.
  const int64_t chunks =
      std::clamp<int64_t>(a.numel / kChunkElements, 1, std::max<int64_t>(1, at::get_num_threads()));
  const int64_t chunk_len = (a.numel + chunks - 1) / chunks;
  std::vector<uint32_t> partial(static_cast<size_t>(chunks * a.channels), 0u);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      channel_abs_max_bits_cpu(a, i * chunk_len, (i + 1) * chunk_len, partial.data() + i * a.channels);
  });
  for (int64_t i = 1; i < chunks; ++i)
    for (int64_t c = 0; c < a.channels; ++c) partial[c] = std::max(partial[c], partial[i * a.channels + c]);
  weight_scales_from_abs_max_bits(a, partial.data());

  // Pass 2: the per-channel quant-dequant with those scales and zero points 0.
  const std::vector<int32_t> zeros(static_cast<size_t>(a.channels), 0);
  const FakeQuantArgs args = weight_quant_fake_quant_args(a);
  const PerChannelQParams qp = weight_quant_qparams(a, zeros.data());
  parallel_over_mask_groups(a.numel,
                            [&](int64_t begin, int64_t end) { fake_quant_per_channel_cpu_range(args, qp, begin, end); });
}

constexpr WeightQuantBackend kCpu{&weight_abs_max};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) { WeightQuantOps<kCpu>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
