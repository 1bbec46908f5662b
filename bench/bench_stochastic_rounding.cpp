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
#include <utility>
#include <vector>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kSeedHigh = int64_t{1} << 62;  // fakequant.ops.SEED_HIGH

using FakeQuantOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, int64_t, c10::string_view,
                                                       const std::optional<at::Tensor>&);

// Bytes each must move (fb::quant_dequant_bytes): input and output, plus fakequant's 1-bit mask
// (its 16-byte seed is negligible) or the composite's bool mask. The composite's intermediates
// (the uniforms, x / scale + u, q, ...) are extra traffic it chooses to make, not counted.
void BM_FakeQuantPerTensorStochastic_fakequant(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const std::vector<torch::Tensor> x = fb::rotating_inputs(p.n, p.dtype, 2.0);
  const fb::QParams q = fb::per_tensor_qparams();
  const auto seed_opts = torch::TensorOptions().device(fb::bench_device()).dtype(torch::kLong);
  static const auto op = fb::op<FakeQuantOp>("fakequant::fake_quant_per_tensor");
  fb::time_op(state, fb::quant_dequant_bytes(p.n, p.dtype, fb::Mask::kPacked), p.n, [&](int64_t i) {
    const torch::Tensor seed = torch::randint(0, kSeedHigh, {2}, seed_opts);
    return op.call(fb::rotate(x, i), q.scale, q.zero_point, fb::kQuantMin, fb::kQuantMax, "stochastic", seed);
  });
}

void BM_FakeQuantPerTensorStochastic_aten(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const std::vector<torch::Tensor> x = fb::rotating_inputs(p.n, p.dtype, 2.0);
  fb::time_op(state, fb::quant_dequant_bytes(p.n, p.dtype, fb::Mask::kBool), p.n, [&](int64_t i) {
    const torch::Tensor& xi = fb::rotate(x, i);
    const torch::Tensor q = torch::floor(xi / fb::kScale + torch::rand_like(xi)) + fb::kZeroPoint;
    torch::Tensor mask = (q >= fb::kQuantMin).logical_and_(q <= fb::kQuantMax);
    torch::Tensor y = (q.clamp(fb::kQuantMin, fb::kQuantMax) - fb::kZeroPoint) * fb::kScale;
    return std::make_pair(std::move(y), std::move(mask));
  });
}

void sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"FakeQuantPerTensorStochastic", BM_FakeQuantPerTensorStochastic_fakequant, BM_FakeQuantPerTensorStochastic_aten,
     sizes},
});

}  // namespace
