// Fake quantization with scales from the tensor's own abs-max, per weight channel and per group:
// fakequant's one op vs the ATen composite doing the same job (abs, amax over the other dims, scale = clamp(amax / half, eps),
// fake_quantize_per_channel_affine_cachemask), on ResNet-50 conv weight shapes and a Linear
// weight, along axis 0. Arguments: {numel, dtype code (0 fp32, 1 bf16, 2 fp16), index into
// bench_common.h's layer shapes}. Quick mode (FAKEQUANT_BENCH_QUICK=1) keeps the [64, 64]
// (numel 4096) and [2048, 512, 1, 1] shapes.

#include <cstdlib>
#include <optional>
#include <tuple>
#include <vector>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kQuantMin = -127;
constexpr int64_t kQuantMax = 127;
constexpr double kEps = 1.1920928955078125e-07;

// The weights of a run's shape and dtype: rotating sets, the dims other than axis 0 and the int32
// zero points [C] of the ATen composite.
struct WeightInputs {
  std::vector<int64_t> shape;
  int64_t n;
  torch::ScalarType dtype;
  std::vector<torch::Tensor> w;
  std::vector<int64_t> other_dims;
  torch::Tensor zero_points;
};

WeightInputs make_weights(benchmark::State& state) {
  WeightInputs in;
  in.shape = fb::layer_shapes()[state.range(2)].sizes;
  in.n = fb::numel_of(in.shape);
  in.dtype = fb::dtype_arg(state.range(1));
  state.SetLabel(fb::shape_label(in.shape, 0));
  for (const auto& t : fb::rotating_inputs(in.n, in.dtype, 0.05)) in.w.push_back(t.view(in.shape));
  for (int64_t d = 1; d < static_cast<int64_t>(in.shape.size()); ++d) in.other_dims.push_back(d);
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  in.zero_points = torch::zeros({in.shape[0]}, opts.dtype(torch::kInt));
  return in;
}

// Bytes each must move: fakequant reads the weight once, writes output, 1-bit mask and
// scales; the composite reads it twice (amax, then the quant-dequant) and writes a bool mask.
double weight_fakequant_bytes(const WeightInputs& in) {
  return static_cast<double>(2 * in.n * torch::elementSize(in.dtype) + (in.n + 7) / 8 + 4 * in.shape[0]);
}
double weight_aten_bytes(const WeightInputs& in) {
  return static_cast<double>(3 * in.n * torch::elementSize(in.dtype) + in.n + 4 * in.shape[0]);
}

using WeightOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t,
                                                                c10::string_view, double);

void BM_WeightAbsMax_fakequant(benchmark::State& state) {
  const WeightInputs in = make_weights(state);
  static const auto op = fb::op<WeightOp>("fakequant::fake_quant_weight_abs_max");
  fb::time_op(state, weight_fakequant_bytes(in), in.n, [&](int64_t i) {
    return op.call(fb::rotate(in.w, i), 0, kQuantMin, kQuantMax, "half_even", kEps);
  });
}

void BM_WeightAbsMax_aten(benchmark::State& state) {
  const WeightInputs in = make_weights(state);
  const double half = static_cast<double>(kQuantMax - kQuantMin) / 2.0;
  fb::time_op(state, weight_aten_bytes(in), in.n, [&](int64_t i) {
    const torch::Tensor& w = fb::rotate(in.w, i);
    const torch::Tensor absmax = at::amax(at::abs(w), in.other_dims).to(torch::kFloat);
    const torch::Tensor scale = at::clamp_min(absmax / half, kEps);
    return at::fake_quantize_per_channel_affine_cachemask(w, scale, in.zero_points, 0, kQuantMin, kQuantMax);
  });
}

// Per-group int4 (groups of 32 along the last dim of the weight as [C, numel / C]): fakequant's
// op vs torchao's eager arithmetic written in ATen (get_group_qparams_symmetric's amin / amax,
// the scale in the input's dtype, then _fake_quantize_affine's reciprocal product, round,
// clamp, dequantise); torchao computes no mask.
constexpr int64_t kGroup = 32;

double per_group_fakequant_bytes(const WeightInputs& in) {
  return static_cast<double>(2 * in.n * torch::elementSize(in.dtype) + (in.n + 7) / 8 + 4 * (in.n / kGroup));
}
double per_group_aten_bytes(const WeightInputs& in) {
  return static_cast<double>(3 * in.n * torch::elementSize(in.dtype) + 4 * (in.n / kGroup));
}

using PerGroupOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t,
                                                                  c10::string_view, std::optional<double>);

void BM_PerGroup_fakequant(benchmark::State& state) {
  const WeightInputs in = make_weights(state);
  static const auto op = fb::op<PerGroupOp>("fakequant::fake_quant_per_group");
  fb::time_op(state, per_group_fakequant_bytes(in), in.n, [&](int64_t i) {
    return op.call(fb::rotate(in.w, i).view({in.shape[0], -1}), kGroup, -8, 7, "half_even", std::nullopt);
  });
}

void BM_PerGroup_aten(benchmark::State& state) {
  const WeightInputs in = make_weights(state);
  const double eps = in.dtype == torch::kHalf ? 6.103515625e-05 : 1.1754943508222875e-38;
  fb::time_op(state, per_group_aten_bytes(in), in.n, [&](int64_t i) {
    const torch::Tensor g = fb::rotate(in.w, i).view({-1, kGroup});
    const torch::Tensor lo = at::clamp_max(at::amin(g, {1}, true), 0);
    const torch::Tensor hi = at::clamp_min(at::amax(g, {1}, true), 0);
    const torch::Tensor scale = at::clamp_min(at::maximum(-lo, hi) / 7.5, eps).to(torch::kFloat);
    const torch::Tensor q = at::clamp(at::round(g * at::reciprocal(scale)), -8, 7);
    return (q.to(in.dtype) * scale).to(in.dtype);
  });
}

// Weight shapes of bench_common.h's layer table: [64, 64], ResNet-50 conv weights, Linear.
void weight_args(benchmark::internal::Benchmark* b) { fb::layer_args(b, {0, 1}, /*weights_only=*/true); }

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"WeightAbsMax", BM_WeightAbsMax_fakequant, BM_WeightAbsMax_aten, weight_args},
    {"PerGroup", BM_PerGroup_fakequant, BM_PerGroup_aten, weight_args},
});

}  // namespace
