// Stochastic rounding: fakequant's per-tensor quant-dequant with rounding "stochastic" vs
// the ATen way of doing the same job. ATen has no stochastic fake quant; the composite
// floor(x / scale + rand_like(x)) + zero_point, then the mask, clamp and dequantisation as
// separate ATen ops, is what a user would write. Both sides draw their randomness inside
// the timed region: fakequant a 2-element seed (at::randint, as the Python API does), ATen a
// full-size uniform tensor. Arguments: {numel, dtype code (0 fp32, 1 bf16, 2 fp16)} over the
// size sweep of bench_common.h. Linked into fakequant_bench.

#include <cstdlib>
#include <optional>
#include <tuple>
#include <vector>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kQuantMin = -128;
constexpr int64_t kQuantMax = 127;
constexpr double kScale = 0.02;
constexpr int64_t kZeroPoint = 3;
constexpr int64_t kSeedHigh = int64_t{1} << 62;  // fakequant.ops.SEED_HIGH

// Bytes each must move: input and output, plus fakequant's 1-bit mask (its 16-byte seed is
// negligible) or the composite's bool mask. The composite's intermediates (the uniforms,
// x / scale + u, q, ...) are extra traffic it chooses to make, not counted.
double fakequant_bytes(int64_t n, torch::ScalarType dtype) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + (n + 7) / 8);
}
double aten_bytes(int64_t n, torch::ScalarType dtype) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + n);
}

std::vector<torch::Tensor> make_inputs(int64_t n, torch::ScalarType dtype) {
  return fb::random_sets(n, dtype, fb::rotation_sets(2 * n * torch::elementSize(dtype)), 2.0);
}

using FakeQuantOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, int64_t, c10::string_view,
                                                       const std::optional<at::Tensor>&);

void BM_FakeQuantPerTensorStochastic_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  const std::vector<torch::Tensor> x = make_inputs(n, dtype);
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  const torch::Tensor scale = torch::full({1}, kScale, opts.dtype(torch::kFloat));
  const torch::Tensor zero_point = torch::full({1}, kZeroPoint, opts.dtype(torch::kInt));
  static const auto op = fb::op<FakeQuantOp>("fakequant::fake_quant_per_tensor");
  fb::run_timed(state, [&](int64_t i) {
    const torch::Tensor seed = torch::randint(0, kSeedHigh, {2}, opts.dtype(torch::kLong));
    auto out = op.call(x[i % x.size()], scale, zero_point, kQuantMin, kQuantMax, "stochastic", seed);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, fakequant_bytes(n, dtype), n);
}

void BM_FakeQuantPerTensorStochastic_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  const std::vector<torch::Tensor> x = make_inputs(n, dtype);
  fb::run_timed(state, [&](int64_t i) {
    const torch::Tensor& xi = x[i % x.size()];
    const torch::Tensor q = torch::floor(xi / kScale + torch::rand_like(xi)) + kZeroPoint;
    const torch::Tensor mask = (q >= kQuantMin).logical_and_(q <= kQuantMax);
    const torch::Tensor y = (q.clamp(kQuantMin, kQuantMax) - kZeroPoint) * kScale;
    benchmark::DoNotOptimize(y);
    benchmark::DoNotOptimize(mask);
  });
  fb::set_bandwidth(state, aten_bytes(n, dtype), n);
}

void sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }

}  // namespace

BENCHMARK(BM_FakeQuantPerTensorStochastic_fakequant)->Apply(sizes);
BENCHMARK(BM_FakeQuantPerTensorStochastic_aten)->Apply(sizes);
