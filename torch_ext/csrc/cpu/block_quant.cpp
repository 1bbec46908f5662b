// CPU backend of fake_quant_block (the op body: block_quant.h): where the rule reads the
// tensor's abs-max, pass 1 reduces chunks of memory in parallel into partial maxima (integer
// maxima of abs_bits: exact, order-free); then the bands of tiles are reduced and quantised
// while in cache, in parallel over chunks of block_bands_per_chunk bands (each chunk starts
// on a mask byte, so threads never share one).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../block_quant.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

void block_quant(BlockQuantCall& call) {
  const BlockQuantArgs& a = call.args;
  const int64_t numel = a.rows * a.cols;
  if (block_quant_needs_tensor_amax(a)) {
    const int64_t chunks = (numel + kChunkElements - 1) / kChunkElements;
    std::vector<uint32_t> partial(static_cast<size_t>(chunks), 0u);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        partial[i] = block_abs_max_bits_cpu(a, i * kChunkElements, (i + 1) * kChunkElements);
      }
    });
    const uint32_t bits = *std::max_element(partial.begin(), partial.end());
    *a.tensor_amax = bits > 0x7F800000u ? bits_float(0x7FC00000u) : bits_float(bits);  // any NaN: the quiet NaN
  }
  const int64_t per_chunk = block_bands_per_chunk(a);
  const int64_t chunks = (block_grid_rows(a) + per_chunk - 1) / per_chunk;
  const int64_t chunk_elements = std::max<int64_t>(per_chunk * a.block_rows * a.cols, 1);
  const int64_t grain = std::max<int64_t>(1, kChunkElements / chunk_elements);
  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    block_quant_cpu_bands(a, begin * per_chunk, end * per_chunk);
  });
}

constexpr BlockQuantBackend kCpu{&block_quant};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) { BlockQuantOps<kCpu>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
