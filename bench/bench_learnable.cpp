// Learnable scale / zero point (LSQ, LSQ+): one training step's worth of work - the forward
// quant-dequant and the backward that returns grad_input, grad_scale and grad_zero_point -
// fakequant's ops vs ATen's _fake_quantize_learnable_per_{tensor,channel}_affine and their
// backward ops, called directly (no autograd overhead on either side). Arguments: {numel,
// dtype code (0 fp32, 1 bf16)}. ATen's backward ops take bf16 input (computed in fp32, with
// grad_input returned as fp32), so bf16 is timed on both sides. Sizes: the sweep of
// bench_common.h.

#include <array>
#include <cstdlib>
#include <tuple>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kQuantMin = -128;
constexpr int64_t kQuantMax = 127;
constexpr int64_t kChannels = 64;  // per-channel: axis 0 of [64, numel / 64]

struct LearnableInputs {
  std::vector<torch::Tensor> x, dy;
  torch::Tensor scale, zero_point;
};

LearnableInputs make_inputs(int64_t n, torch::ScalarType dtype, bool per_channel) {
  LearnableInputs in;
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  const int sets = fb::rotation_sets(3 * n * torch::elementSize(dtype));  // x, dy and the outputs rotate
  const std::vector<torch::Tensor> xs = fb::random_sets(n, dtype, sets, 2.0, /*tag=*/0);
  const std::vector<torch::Tensor> dys = fb::random_sets(n, dtype, sets, 1.0, /*tag=*/1);
  for (int s = 0; s < sets; ++s) {
    torch::Tensor x = xs[s], dy = dys[s];
    if (per_channel) x = x.view({kChannels, n / kChannels}), dy = dy.view({kChannels, n / kChannels});
    in.x.push_back(x);
    in.dy.push_back(dy);
  }
  const int64_t c = per_channel ? kChannels : 1;
  in.scale = torch::rand({c}, opts.dtype(torch::kFloat)).mul(0.02).add(0.01);
  in.zero_point = torch::rand({c}, opts.dtype(torch::kFloat)).mul(20.0).sub(10.0);
  return in;
}

// The bytes one training step must move: forward reads x and writes y, backward reads x and
// grad_output and writes grad_input (the qparam gradients are a few bytes). The same count is
// used for ATen, which moves more (its bool mask, two full-size fp32 gradient vectors written
// and read back for the sums), so GB/s compare like times.
double step_bytes(int64_t n, torch::ScalarType dtype) { return static_cast<double>(5 * n * torch::elementSize(dtype)); }

using ForwardPerTensor = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double);
using BackwardPerTensor = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double,
    const c10::List<bool>&);
using ForwardPerChannel = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                     int64_t, double);
using BackwardPerChannel = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double,
    const c10::List<bool>&);

constexpr double kGradFactor = 0.01;
const c10::List<bool> kAllGrads({true, true, true});  // bool[3] in the schema

// One training step on input x and grad_output dy: the forward's output and the backward's
// (grad_input, grad_scale, grad_zero_point). Forward first: a braced list runs its calls in order.
using Step = std::pair<at::Tensor, std::tuple<at::Tensor, at::Tensor, at::Tensor>>;

Step ours_per_tensor(const LearnableInputs& in, const at::Tensor& x, const at::Tensor& dy) {
  static const auto fwd = fb::op<ForwardPerTensor>("fakequant::fake_quant_learnable_per_tensor");
  static const auto bwd = fb::op<BackwardPerTensor>("fakequant::fake_quant_learnable_per_tensor_backward");
  return {fwd.call(x, in.scale, in.zero_point, kQuantMin, kQuantMax, kGradFactor),
          bwd.call(dy, x, in.scale, in.zero_point, kQuantMin, kQuantMax, kGradFactor, kAllGrads)};
}

Step aten_per_tensor(const LearnableInputs& in, const at::Tensor& x, const at::Tensor& dy) {
  return {at::_fake_quantize_learnable_per_tensor_affine(x, in.scale, in.zero_point, kQuantMin, kQuantMax, kGradFactor),
          at::_fake_quantize_learnable_per_tensor_affine_backward(dy, x, in.scale, in.zero_point, kQuantMin, kQuantMax,
                                                                  kGradFactor)};
}

Step ours_per_channel(const LearnableInputs& in, const at::Tensor& x, const at::Tensor& dy) {
  static const auto fwd = fb::op<ForwardPerChannel>("fakequant::fake_quant_learnable_per_channel");
  static const auto bwd = fb::op<BackwardPerChannel>("fakequant::fake_quant_learnable_per_channel_backward");
  return {fwd.call(x, in.scale, in.zero_point, 0, kQuantMin, kQuantMax, kGradFactor),
          bwd.call(dy, x, in.scale, in.zero_point, 0, kQuantMin, kQuantMax, kGradFactor, kAllGrads)};
}

Step aten_per_channel(const LearnableInputs& in, const at::Tensor& x, const at::Tensor& dy) {
  return {at::_fake_quantize_learnable_per_channel_affine(x, in.scale, in.zero_point, 0, kQuantMin, kQuantMax,
                                                          kGradFactor),
          at::_fake_quantize_learnable_per_channel_affine_backward(dy, x, in.scale, in.zero_point, 0, kQuantMin,
                                                                   kQuantMax, kGradFactor)};
}

// A benchmark of `step` on the inputs of the run's numel and dtype.
void time_step(benchmark::State& state, bool per_channel, Step (*step)(const LearnableInputs&, const at::Tensor&,
                                                                        const at::Tensor&)) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const LearnableInputs in = make_inputs(p.n, p.dtype, per_channel);
  fb::time_op(state, step_bytes(p.n, p.dtype), p.n,
              [&](int64_t i) { return step(in, fb::rotate(in.x, i), fb::rotate(in.dy, i)); });
}

void BM_LearnablePerTensor_fakequant(benchmark::State& state) { time_step(state, false, ours_per_tensor); }
void BM_LearnablePerTensor_aten(benchmark::State& state) { time_step(state, false, aten_per_tensor); }
void BM_LearnablePerChannel_fakequant(benchmark::State& state) { time_step(state, true, ours_per_channel); }
void BM_LearnablePerChannel_aten(benchmark::State& state) { time_step(state, true, aten_per_channel); }

void learnable_sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"LearnablePerTensor", BM_LearnablePerTensor_fakequant, BM_LearnablePerTensor_aten, learnable_sizes},
    {"LearnablePerChannel", BM_LearnablePerChannel_fakequant, BM_LearnablePerChannel_aten, learnable_sizes},
});

}  // namespace
