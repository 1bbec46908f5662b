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

using fb::kQuantMax;
using fb::kQuantMin;
using fb::kScale;
using fb::kZeroPoint;
using fb::Mask;

// Rotating input sets with the scale and zero point tensors fakequant's ops take (ATen's
// per-tensor ops take kScale and kZeroPoint as numbers), the per-channel axis, and for the
// backward the mask each side's forward writes for each set.
struct Inputs {
  std::vector<torch::Tensor> x, masks;
  torch::Tensor scale, zero_point;
  int64_t axis = 0;
};

Inputs make_inputs(int64_t n, torch::ScalarType dtype) {
  Inputs in;
  in.x = fb::rotating_inputs(n, dtype, 2.0);
  const fb::QParams q = fb::per_tensor_qparams();
  in.scale = q.scale;
  in.zero_point = q.zero_point;
  return in;
}

// Random qparams of `channels` channels: scales in [0.01, 0.03), int32 zero points in [-10, 10).
void set_channel_qparams(Inputs& in, int64_t channels) {
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  in.scale = torch::rand({channels}, opts.dtype(torch::kFloat)).mul(0.02).add(0.01);
  in.zero_point = torch::randint(-10, 10, {channels}, opts.dtype(torch::kInt));
}

// The timed calls on input set `i` of the rotation, shared by the size sweep and the layer
// shapes.
using FakeQuantOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, int64_t, c10::string_view,
                                                       const std::optional<at::Tensor>&);

std::tuple<at::Tensor, at::Tensor> ours_per_tensor(const Inputs& in, int64_t i) {
  static const auto op = fb::op<FakeQuantOp>("fakequant::fake_quant_per_tensor");
  return op.call(fb::rotate(in.x, i), in.scale, in.zero_point, kQuantMin, kQuantMax, "half_even", std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> aten_per_tensor(const Inputs& in, int64_t i) {
  return at::fake_quantize_per_tensor_affine_cachemask(fb::rotate(in.x, i), kScale, kZeroPoint, kQuantMin, kQuantMax);
}

using PerChannelOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        int64_t, int64_t, int64_t, c10::string_view,
                                                        const std::optional<at::Tensor>&);

std::tuple<at::Tensor, at::Tensor> ours_per_channel(const Inputs& in, int64_t i) {
  static const auto op = fb::op<PerChannelOp>("fakequant::fake_quant_per_channel");
  return op.call(fb::rotate(in.x, i), in.scale, in.zero_point, in.axis, kQuantMin, kQuantMax, "half_even",
                 std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> aten_per_channel(const Inputs& in, int64_t i) {
  return at::fake_quantize_per_channel_affine_cachemask(fb::rotate(in.x, i), in.scale, in.zero_point, in.axis,
                                                        kQuantMin, kQuantMax);
}

// Backward: fakequant's packed-mask gradient vs ATen's grad * bool mask.
using MaskBackwardOp = at::Tensor(const at::Tensor&, const at::Tensor&);

at::Tensor ours_masked_grad(const Inputs& in, int64_t i) {
  static const auto op = fb::op<MaskBackwardOp>("fakequant::fake_quant_mask_backward");
  return op.call(fb::rotate(in.x, i), fb::rotate(in.masks, i));
}

at::Tensor aten_masked_grad(const Inputs& in, int64_t i) { return fb::rotate(in.x, i) * fb::rotate(in.masks, i); }

// --- Size sweep ---------------------------------------------------------------------------
// Per tensor on [numel]; per channel along axis 0 of [64, numel / 64] (int32 zero points).

constexpr int64_t kChannels = 64;

Inputs make_channel_inputs(int64_t n, torch::ScalarType dtype) {
  Inputs in = make_inputs(n, dtype);
  for (auto& t : in.x) t = t.view({kChannels, n / kChannels});
  set_channel_qparams(in, kChannels);
  return in;
}

// Per-tensor inputs with the masks `forward` writes for them.
template <typename Forward>
Inputs make_masked_inputs(int64_t n, torch::ScalarType dtype, Forward forward) {
  Inputs in = make_inputs(n, dtype);
  for (size_t s = 0; s < in.x.size(); ++s) in.masks.push_back(std::get<1>(forward(in, s)));
  return in;
}
Inputs ours_masked_inputs(int64_t n, torch::ScalarType dtype) { return make_masked_inputs(n, dtype, ours_per_tensor); }
Inputs aten_masked_inputs(int64_t n, torch::ScalarType dtype) { return make_masked_inputs(n, dtype, aten_per_tensor); }

// A size-sweep benchmark: the inputs `make` builds for the run's numel and dtype, `call` timed
// on them, counted as a quant-dequant writing `mask`.
template <typename Make, typename Call>
void sweep(benchmark::State& state, Make make, Call call, Mask mask) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const Inputs in = make(p.n, p.dtype);
  fb::time_op(state, fb::quant_dequant_bytes(p.n, p.dtype, mask), p.n, [&](int64_t i) { return call(in, i); });
}

void BM_FakeQuantPerTensor_fakequant(benchmark::State& state) {
  sweep(state, make_inputs, ours_per_tensor, Mask::kPacked);
}
void BM_FakeQuantPerTensor_aten(benchmark::State& state) { sweep(state, make_inputs, aten_per_tensor, Mask::kBool); }
void BM_FakeQuantPerChannel_fakequant(benchmark::State& state) {
  sweep(state, make_channel_inputs, ours_per_channel, Mask::kPacked);
}
void BM_FakeQuantPerChannel_aten(benchmark::State& state) {
  sweep(state, make_channel_inputs, aten_per_channel, Mask::kBool);
}
void BM_MaskedGrad_fakequant(benchmark::State& state) {
  sweep(state, ours_masked_inputs, ours_masked_grad, Mask::kPacked);
}
void BM_MaskedGrad_aten(benchmark::State& state) { sweep(state, aten_masked_inputs, aten_masked_grad, Mask::kBool); }

// --- Layer shapes -------------------------------------------------------------------------
// Per tensor: the shape only sets numel. Per channel: weights along axis 0, activations along
// axis 1 (C of NCHW: runs of H*W elements per channel).

Inputs make_layer_inputs(benchmark::State& state, torch::ScalarType dtype, bool per_channel) {
  const fb::LayerShape& shape = fb::layer_shapes()[state.range(2)];
  Inputs in = make_inputs(fb::numel_of(shape.sizes), dtype);
  for (auto& t : in.x) t = t.view(shape.sizes);
  if (per_channel) {
    in.axis = shape.activation ? 1 : 0;
    set_channel_qparams(in, shape.sizes[in.axis]);
  }
  state.SetLabel(fb::shape_label(shape.sizes, per_channel ? in.axis : -1));
  return in;
}

// A layer-shape benchmark: `call` timed on the inputs of the run's shape and dtype.
template <typename Call>
void layer(benchmark::State& state, bool per_channel, Call call, Mask mask) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  const Inputs in = make_layer_inputs(state, dtype, per_channel);
  fb::time_op(state, fb::quant_dequant_bytes(n, dtype, mask), n, [&](int64_t i) { return call(in, i); });
}

void BM_FakeQuantPerTensorLayer_fakequant(benchmark::State& state) {
  layer(state, false, ours_per_tensor, Mask::kPacked);
}
void BM_FakeQuantPerTensorLayer_aten(benchmark::State& state) { layer(state, false, aten_per_tensor, Mask::kBool); }
void BM_FakeQuantPerChannelLayer_fakequant(benchmark::State& state) {
  layer(state, true, ours_per_channel, Mask::kPacked);
}
void BM_FakeQuantPerChannelLayer_aten(benchmark::State& state) { layer(state, true, aten_per_channel, Mask::kBool); }

void sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }
void layers(benchmark::internal::Benchmark* b) { fb::layer_args(b, {0, 1}, false); }

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"FakeQuantPerTensor", BM_FakeQuantPerTensor_fakequant, BM_FakeQuantPerTensor_aten, sizes},
    {"FakeQuantPerChannel", BM_FakeQuantPerChannel_fakequant, BM_FakeQuantPerChannel_aten, sizes},
    {"MaskedGrad", BM_MaskedGrad_fakequant, BM_MaskedGrad_aten, sizes},
    {"FakeQuantPerTensorLayer", BM_FakeQuantPerTensorLayer_fakequant, BM_FakeQuantPerTensorLayer_aten, layers},
    {"FakeQuantPerChannelLayer", BM_FakeQuantPerChannelLayer_fakequant, BM_FakeQuantPerChannelLayer_aten, layers},
});

}  // namespace

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
