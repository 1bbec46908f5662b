// The device-to-device copy baseline every op is compared with ("%copy" in the report): at
// each size of the sweep and each layer-shape numel, fp32 and bf16, the same rotation as the
// ops. GPU: cudaMemcpyAsync device to device on the stream the CUDA events are recorded on,
// timed with those events (manual time). CPU: at::Tensor::copy_ between preallocated
// contiguous buffers (a parallel memcpy; the destination pages are touched before timing),
// real time. Bytes: n elements read + n written.
// Linked into fakequant_bench (main() lives in bench_fake_quant.cpp).
#include <algorithm>
#include <set>
#include <vector>

#include "bench_common.h"

#if defined(FAKEQUANT_BENCH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fb = fakequant_bench;

namespace {

void BM_Copy(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  const int64_t bytes = n * static_cast<int64_t>(torch::elementSize(dtype));
  const int sets = fb::rotation_sets(2 * bytes);
  const std::vector<torch::Tensor> in = fb::random_sets(n, dtype, sets, 2.0);
  std::vector<torch::Tensor> out;
  for (const auto& t : in) out.push_back(torch::empty_like(t).copy_(t));  // pages touched before timing
#if defined(FAKEQUANT_BENCH_CUDA)
  if (fb::use_cuda()) {
    fb::run_timed(state, [&](int64_t i) {
      // The legacy default stream: the one run_timed records its events on.
      const cudaError_t err = cudaMemcpyAsync(out[i % out.size()].data_ptr(), in[i % in.size()].data_ptr(),
                                              static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, nullptr);
      if (err != cudaSuccess) state.SkipWithError(cudaGetErrorString(err));
    });
    fb::set_bandwidth(state, static_cast<double>(2 * bytes), n);
    return;
  }
#endif
  fb::run_timed(state, [&](int64_t i) { out[i % out.size()].copy_(in[i % in.size()]); });
  fb::set_bandwidth(state, static_cast<double>(2 * bytes), n);
}

// Every numel any family runs: the sweep and the layer shapes.
void copy_args(benchmark::internal::Benchmark* b) {
  std::set<int64_t> numels;
  for (const int64_t n : fb::sweep_sizes()) numels.insert(n);
  for (const int64_t s : fb::layer_indices(false)) numels.insert(fb::numel_of(fb::layer_shapes()[s].sizes));
  for (const int64_t dtype : {0, 1})
    for (const int64_t n : numels) b->Args({n, dtype});
  b->ArgNames({"numel", "dtype"});
  fb::configure(b);
}

}  // namespace

BENCHMARK(BM_Copy)->Apply(copy_args);
