// Weight fake quantization with per-channel abs-max scales: fakequant's one op vs the ATen
// composite doing the same job (abs, amax over the other dims, scale = clamp(amax / half, eps),
// fake_quantize_per_channel_affine_cachemask), on ResNet-50 conv weight shapes and a Linear
// weight, along axis 0. Arguments: {numel, dtype code (0 fp32, 1 bf16, 2 fp16), index into
// bench_common.h's layer shapes}. Quick mode (FAKEQUANT_BENCH_QUICK=1) keeps the [64, 64]
// (numel 4096) and [2048, 512, 1, 1] shapes.

#include <cstdlib>
#include <tuple>
#include <vector>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kQuantMin = -127;
constexpr int64_t kQuantMax = 127;
constexpr double kEps = 1.1920928955078125e-07;

struct WeightInputs {
  std::vector<torch::Tensor> w;
  std::vector<int64_t> other_dims;
  torch::Tensor zero_points;  // for the ATen composite (int32 zeros [C])
};

WeightInputs make_weights(const std::vector<int64_t>& shape, torch::ScalarType dtype) {
  const int64_t n = fb::numel_of(shape);
  WeightInputs in;
  const int sets = fb::rotation_sets(2 * n * torch::elementSize(dtype));
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  for (const auto& t : fb::random_sets(n, dtype, sets, 0.05)) in.w.push_back(t.view(shape));
  for (int64_t d = 1; d < static_cast<int64_t>(shape.size()); ++d) in.other_dims.push_back(d);
  in.zero_points = torch::zeros({shape[0]}, opts.dtype(torch::kInt));
  return in;
}

// Bytes each must move: fakequant reads the weight once, writes output, 1-bit mask and
// scales; the composite reads it twice (amax, then the quant-dequant) and writes a bool mask.
double weight_fakequant_bytes(int64_t n, int64_t c, torch::ScalarType dtype) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + (n + 7) / 8 + 4 * c);
}
double weight_aten_bytes(int64_t n, int64_t c, torch::ScalarType dtype) {
  return static_cast<double>(3 * n * torch::elementSize(dtype) + n + 4 * c);
}

using WeightOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t,
                                                                c10::string_view, double);

void BM_WeightAbsMax_fakequant(benchmark::State& state) {
  const auto& shape = fb::layer_shapes()[state.range(2)].sizes;
  const int64_t n = fb::numel_of(shape);
  state.SetLabel(fb::shape_label(shape, 0));
  const auto dtype = fb::dtype_arg(state.range(1));
  WeightInputs in = make_weights(shape, dtype);
  static const auto op = fb::op<WeightOp>("fakequant::fake_quant_weight_abs_max");
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(in.w[i % in.w.size()], 0, kQuantMin, kQuantMax, "half_even", kEps);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, weight_fakequant_bytes(n, shape[0], dtype), n);
}

void BM_WeightAbsMax_aten(benchmark::State& state) {
  const auto& shape = fb::layer_shapes()[state.range(2)].sizes;
  const int64_t n = fb::numel_of(shape);
  state.SetLabel(fb::shape_label(shape, 0));
  const auto dtype = fb::dtype_arg(state.range(1));
  WeightInputs in = make_weights(shape, dtype);
  const double half = static_cast<double>(kQuantMax - kQuantMin) / 2.0;
  fb::run_timed(state, [&](int64_t i) {
    const torch::Tensor& w = in.w[i % in.w.size()];
    const torch::Tensor absmax = at::amax(at::abs(w), in.other_dims).to(torch::kFloat);
    const torch::Tensor scale = at::clamp_min(absmax / half, kEps);
    auto out = at::fake_quantize_per_channel_affine_cachemask(w, scale, in.zero_points, 0, kQuantMin, kQuantMax);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, weight_aten_bytes(n, shape[0], dtype), n);
}

// Weight shapes of bench_common.h's layer table: [64, 64], ResNet-50 conv weights, Linear.
void weight_args(benchmark::internal::Benchmark* b) { fb::layer_args(b, {0, 1}, /*weights_only=*/true); }

}  // namespace

BENCHMARK(BM_WeightAbsMax_fakequant)->Apply(weight_args);
BENCHMARK(BM_WeightAbsMax_aten)->Apply(weight_args);
