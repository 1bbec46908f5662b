// Quant-dequant ops: fakequant's per-tensor and per-channel ops and masked backward vs the
// ATen ops doing the same job, in one binary, on the device present (the copy baseline is in
// bench_copy.cpp). Arguments: {numel, dtype code (0 fp32, 1 bf16, 2 fp16)} over the size
// sweep, and {numel, dtype, shape index} over the layer shapes (bench_common.h). Quick mode
// (FAKEQUANT_BENCH_QUICK=1) keeps two sizes and two shapes. This file holds main().

#include <cstdlib>
#include <optional>
#include <tuple>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kQuantMin = -128;
constexpr int64_t kQuantMax = 127;
constexpr double kScale = 0.02;
constexpr int64_t kZeroPoint = 3;

struct Inputs {
  std::vector<torch::Tensor> x;
  torch::Tensor scale, zero_point;
};

// Bytes each op must move: input and output, plus fakequant's 1-bit mask or ATen's bool mask.
double fakequant_bytes(int64_t n, torch::ScalarType dtype) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + (n + 7) / 8);
}
double aten_bytes(int64_t n, torch::ScalarType dtype) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + n);
}

Inputs make_inputs(int64_t n, torch::ScalarType dtype) {
  const int64_t elem = torch::elementSize(dtype);
  Inputs in;
  in.x = fb::random_sets(n, dtype, fb::rotation_sets(2 * n * elem), 2.0);
  in.scale = torch::full({1}, kScale, torch::TensorOptions().dtype(torch::kFloat).device(fb::bench_device()));
  in.zero_point = torch::full({1}, kZeroPoint, torch::TensorOptions().dtype(torch::kInt).device(fb::bench_device()));
  return in;
}

using FakeQuantOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, int64_t, c10::string_view,
                                                       const std::optional<at::Tensor>&);

const c10::TypedOperatorHandle<FakeQuantOp>& fakequant_op() {
  static const auto op = fb::op<FakeQuantOp>("fakequant::fake_quant_per_tensor");
  return op;
}

void BM_FakeQuantPerTensor_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  Inputs in = make_inputs(n, dtype);
  const auto& op = fakequant_op();
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(in.x[i % in.x.size()], in.scale, in.zero_point, kQuantMin, kQuantMax, "half_even", std::nullopt);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, fakequant_bytes(n, dtype), n);
}

void BM_FakeQuantPerTensor_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  Inputs in = make_inputs(n, dtype);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::fake_quantize_per_tensor_affine_cachemask(in.x[i % in.x.size()], kScale, kZeroPoint, kQuantMin,
                                                             kQuantMax);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, aten_bytes(n, dtype), n);
}

// Per-channel along axis 0 of a [64, numel / 64] tensor (int32 zero points).
constexpr int64_t kChannels = 64;

struct ChannelInputs {
  std::vector<torch::Tensor> x;
  torch::Tensor scale, zero_point;
};

ChannelInputs make_channel_inputs(int64_t n, torch::ScalarType dtype) {
  Inputs flat = make_inputs(n, dtype);
  ChannelInputs in;
  for (auto& t : flat.x) in.x.push_back(t.view({kChannels, n / kChannels}));
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  in.scale = torch::rand({kChannels}, opts.dtype(torch::kFloat)).mul(0.02).add(0.01);
  in.zero_point = torch::randint(-10, 10, {kChannels}, opts.dtype(torch::kInt));
  return in;
}

using PerChannelOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        int64_t, int64_t, int64_t, c10::string_view,
                                                        const std::optional<at::Tensor>&);

void BM_FakeQuantPerChannel_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  ChannelInputs in = make_channel_inputs(n, dtype);
  static const auto op = fb::op<PerChannelOp>("fakequant::fake_quant_per_channel");
  fb::run_timed(state, [&](int64_t i) {
    auto out =
        op.call(in.x[i % in.x.size()], in.scale, in.zero_point, 0, kQuantMin, kQuantMax, "half_even", std::nullopt);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, fakequant_bytes(n, dtype), n);
}

void BM_FakeQuantPerChannel_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  ChannelInputs in = make_channel_inputs(n, dtype);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::fake_quantize_per_channel_affine_cachemask(in.x[i % in.x.size()], in.scale, in.zero_point, 0,
                                                              kQuantMin, kQuantMax);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, aten_bytes(n, dtype), n);
}

// Backward: fakequant's packed-mask gradient vs ATen's grad * bool mask.
void BM_MaskedGrad_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  Inputs in = make_inputs(n, dtype);
  std::vector<torch::Tensor> masks;
  for (const auto& x : in.x) {
    masks.push_back(
        std::get<1>(fakequant_op().call(x, in.scale, in.zero_point, kQuantMin, kQuantMax, "half_even", std::nullopt)));
  }
  static const auto op =
      fb::op<at::Tensor(const at::Tensor&, const at::Tensor&)>("fakequant::fake_quant_mask_backward");
  fb::run_timed(state, [&](int64_t i) {
    auto g = op.call(in.x[i % in.x.size()], masks[i % masks.size()]);
    benchmark::DoNotOptimize(g);
  });
  fb::set_bandwidth(state, fakequant_bytes(n, dtype), n);
}

void BM_MaskedGrad_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  Inputs in = make_inputs(n, dtype);
  std::vector<torch::Tensor> masks;
  for (const auto& x : in.x)
    masks.push_back(std::get<1>(at::fake_quantize_per_tensor_affine_cachemask(x, kScale, kZeroPoint, kQuantMin, kQuantMax)));
  fb::run_timed(state, [&](int64_t i) {
    auto g = in.x[i % in.x.size()] * masks[i % masks.size()];
    benchmark::DoNotOptimize(g);
  });
  fb::set_bandwidth(state, aten_bytes(n, dtype), n);
}

// --- Layer shapes -------------------------------------------------------------------------
// Per tensor: the shape only sets numel. Per channel: weights along axis 0, activations along
// axis 1 (C of NCHW: runs of H*W elements per channel).

struct LayerInputs {
  std::vector<torch::Tensor> x;
  torch::Tensor scale, zero_point;
  int64_t axis = 0;
};

LayerInputs make_layer_inputs(benchmark::State& state, torch::ScalarType dtype, bool per_channel) {
  const fb::LayerShape& shape = fb::layer_shapes()[state.range(2)];
  const int64_t n = fb::numel_of(shape.sizes);
  LayerInputs in;
  for (const auto& t : fb::random_sets(n, dtype, fb::rotation_sets(2 * n * torch::elementSize(dtype)), 2.0))
    in.x.push_back(t.view(shape.sizes));
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  if (per_channel) {
    in.axis = shape.activation ? 1 : 0;
    const int64_t c = shape.sizes[in.axis];
    in.scale = torch::rand({c}, opts.dtype(torch::kFloat)).mul(0.02).add(0.01);
    in.zero_point = torch::randint(-10, 10, {c}, opts.dtype(torch::kInt));
  } else {
    in.scale = torch::full({1}, kScale, opts.dtype(torch::kFloat));
    in.zero_point = torch::full({1}, kZeroPoint, opts.dtype(torch::kInt));
  }
  state.SetLabel(fb::shape_label(shape.sizes, per_channel ? in.axis : -1));
  return in;
}

void BM_FakeQuantPerTensorLayer_fakequant(benchmark::State& state) {
  const auto dtype = fb::dtype_arg(state.range(1));
  LayerInputs in = make_layer_inputs(state, dtype, false);
  const auto& op = fakequant_op();
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(in.x[i % in.x.size()], in.scale, in.zero_point, kQuantMin, kQuantMax, "half_even", std::nullopt);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, fakequant_bytes(state.range(0), dtype), state.range(0));
}

void BM_FakeQuantPerTensorLayer_aten(benchmark::State& state) {
  const auto dtype = fb::dtype_arg(state.range(1));
  LayerInputs in = make_layer_inputs(state, dtype, false);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::fake_quantize_per_tensor_affine_cachemask(in.x[i % in.x.size()], kScale, kZeroPoint, kQuantMin,
                                                             kQuantMax);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, aten_bytes(state.range(0), dtype), state.range(0));
}

void BM_FakeQuantPerChannelLayer_fakequant(benchmark::State& state) {
  const auto dtype = fb::dtype_arg(state.range(1));
  LayerInputs in = make_layer_inputs(state, dtype, true);
  static const auto op = fb::op<PerChannelOp>("fakequant::fake_quant_per_channel");
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(in.x[i % in.x.size()], in.scale, in.zero_point, in.axis, kQuantMin, kQuantMax, "half_even",
                       std::nullopt);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, fakequant_bytes(state.range(0), dtype), state.range(0));
}

void BM_FakeQuantPerChannelLayer_aten(benchmark::State& state) {
  const auto dtype = fb::dtype_arg(state.range(1));
  LayerInputs in = make_layer_inputs(state, dtype, true);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::fake_quantize_per_channel_affine_cachemask(in.x[i % in.x.size()], in.scale, in.zero_point, in.axis,
                                                              kQuantMin, kQuantMax);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, aten_bytes(state.range(0), dtype), state.range(0));
}

void sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }
void layers(benchmark::internal::Benchmark* b) { fb::layer_args(b, {0, 1}, false); }

}  // namespace

BENCHMARK(BM_FakeQuantPerTensor_fakequant)->Apply(sizes);
BENCHMARK(BM_FakeQuantPerTensor_aten)->Apply(sizes);
BENCHMARK(BM_FakeQuantPerChannel_fakequant)->Apply(sizes);
BENCHMARK(BM_FakeQuantPerChannel_aten)->Apply(sizes);
BENCHMARK(BM_MaskedGrad_fakequant)->Apply(sizes);
BENCHMARK(BM_MaskedGrad_aten)->Apply(sizes);
BENCHMARK(BM_FakeQuantPerTensorLayer_fakequant)->Apply(layers);
BENCHMARK(BM_FakeQuantPerTensorLayer_aten)->Apply(layers);
BENCHMARK(BM_FakeQuantPerChannelLayer_fakequant)->Apply(layers);
BENCHMARK(BM_FakeQuantPerChannelLayer_aten)->Apply(layers);

int main(int argc, char** argv) {
  torch::manual_seed(0);
  benchmark::AddCustomContext("device", fakequant_bench::use_cuda() ? "cuda" : "cpu");
  benchmark::AddCustomContext("torch", TORCH_VERSION);
  benchmark::AddCustomContext("intra_op_threads", std::to_string(at::get_num_threads()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
