// ConvBN(+ReLU) QAT layers: fakequant::conv_bn_fake_quant (and its backward) against the same
// job written with ATen ops, on ResNet-50 conv layers. The convolutions are ATen's on both
// sides (mkldnn on the CPU, cuDNN on CUDA); what differs is everything around them.
//   BM_ConvBnForward_*    training forward, fold_mode="running", ReLU, weight fake quant:
//                         torch.ao ConvBnReLU2d._forward_approximate as ATen ops;
//   BM_ConvBnStep_*       the same forward + backward (dx, dW, dgamma, dbeta);
//   BM_ConvBnBatchStep_*  forward + backward, fold_mode="batch", against the linger-style
//                         composite of bench/bench_convbn_step.py (two convolutions, training
//                         batch_norm for the gradient, the detach trick).
// Arguments: {numel (input elements N*C_in*H*W), dtype code, shape index into kShapes}.
// dtype 0: everything float32. dtype 1: bfloat16 activations (input, grad_output, outputs)
// with float32 weight, BN parameters and running statistics, as in autocast training; the
// ATen side casts the quantised fold to bfloat16 for the convolution (what autocast does) and
// keeps its activations in bfloat16 (the fold scale is cast before the division, the batch
// shift before the addition) so that both sides produce bfloat16 outputs.
// Backward: fakequant calls the backward op directly (what its autograd.Function does); the
// ATen side runs torch::autograd::grad, so the autograd engine's cost is part of its time.
// Quick mode (FAKEQUANT_BENCH_QUICK=1): two tiny layers at batch 2, one of 4096 input
// elements (ctest's bench_smoke). Both sides update their running statistics every call.
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kQuantMin = -128;
constexpr int64_t kQuantMax = 127;
constexpr double kBnEps = 1e-5;
constexpr double kMomentum = 0.1;
constexpr double kWeightEps = 1.1920928955078125e-07;  // float32 epsilon
// Per-channel symmetric abs-max scale: absmax / ((quant_max - quant_min) / 2).
constexpr double kHalfRange = (kQuantMax - kQuantMin) / 2.0;

// A conv layer: C_in -> C_out, k x k, stride 1, padding k / 2, on H = W = hw.
struct ConvBnShape {
  int64_t c_in, c_out, k, hw;
  bool quick;
};

// ResNet-50's 3x3 convolutions of its four stages and a 1x1 reduction (full mode), and two
// tiny layers (quick mode; 2 x 32 x 8 x 8 = 4096 input elements for bench_smoke).
const std::vector<ConvBnShape> kShapes = {
    {64, 64, 3, 56, false},  {128, 128, 3, 28, false}, {256, 256, 3, 14, false}, {512, 512, 3, 7, false},
    {256, 64, 1, 56, false}, {16, 16, 3, 14, true},    {32, 16, 1, 8, true},
};

// Batch 32 on CUDA; 8 on the CPU, so that the ConvBN rows keep a full CPU report's run time
// reasonable (docs/perf-notes.md, "Method").
int64_t batch_of(const ConvBnShape& s) {
  if (s.quick) return 2;
  return fb::use_cuda() ? 32 : 8;
}

std::vector<int64_t> input_shape(const ConvBnShape& s) { return {batch_of(s), s.c_in, s.hw, s.hw}; }
std::vector<int64_t> output_shape(const ConvBnShape& s) { return {batch_of(s), s.c_out, s.hw, s.hw}; }
std::vector<int64_t> weight_shape(const ConvBnShape& s) { return {s.c_out, s.c_in, s.k, s.k}; }

// "8x64x56x56 3x3 ->64"
std::string layer_label(const ConvBnShape& s) {
  return fb::shape_label(input_shape(s)) + " " + std::to_string(s.k) + "x" + std::to_string(s.k) + " ->" +
         std::to_string(s.c_out);
}

// FLOPs of one convolution of the layer (forward, data gradient and weight gradient cost the
// same): 2 * N * C_out * H_out * W_out * C_in / groups * k * k.
double conv_flops(const ConvBnShape& s) {
  return 2.0 * batch_of(s) * s.c_out * s.hw * s.hw * s.c_in * s.k * s.k;
}

// The least bytes a forward must move: read x and W, write y. A step adds: read grad_output,
// write grad_input and grad_weight. (BN parameters and statistics are [C] vectors; masks and
// saved activations are choices of each implementation, so not counted.)
double forward_bytes(const ConvBnShape& s, torch::ScalarType act) {
  const double e = static_cast<double>(torch::elementSize(act));
  return e * (fb::numel_of(input_shape(s)) + fb::numel_of(output_shape(s))) + 4.0 * fb::numel_of(weight_shape(s));
}
double step_bytes(const ConvBnShape& s, torch::ScalarType act) { return 2.0 * forward_bytes(s, act); }

struct Layer {
  std::vector<torch::Tensor> x, grad_out;  // rotation sets, activation dtype
  torch::Tensor weight, gamma, beta;       // float32
  torch::Tensor zero_points;               // int32 zeros [C_out], for the ATen fake quant
  std::vector<int64_t> stride, padding, dilation;
};

// The inputs of one (shape, dtype), shared by the six benchmarks (so each pair runs on the
// same data) and kept while the next benchmark has the same key. Convolutions are compute
// bound (hundreds of FLOPs per byte at these shapes), so a warm cache changes their time
// little: the sets rotate only up to 8 copies (rotation_sets over the input and output bytes,
// a single set where those exceed the rotation span), which keeps the memory and the set-up
// time of the large layers bounded.
const Layer& layer_for(int64_t index, torch::ScalarType act) {
  static std::pair<int64_t, torch::ScalarType> key{-1, torch::kFloat};
  static Layer layer;
  if (key == std::make_pair(index, act)) return layer;
  const ConvBnShape& s = kShapes[index];
  layer = Layer{};
  const int64_t nx = fb::numel_of(input_shape(s)), ny = fb::numel_of(output_shape(s));
  const int sets = std::min(fb::rotation_sets((nx + ny) * torch::elementSize(act)), 8);
  for (const auto& t : fb::random_sets(nx, act, sets, 1.0, 0)) layer.x.push_back(t.view(input_shape(s)));
  for (const auto& t : fb::random_sets(ny, act, sets, 1.0, 1)) layer.grad_out.push_back(t.view(output_shape(s)));
  const auto opts = torch::TensorOptions().device(fb::bench_device());
  const double fan_in = static_cast<double>(s.c_in * s.k * s.k);
  layer.weight = torch::randn(weight_shape(s), opts).mul_(std::sqrt(2.0 / fan_in));
  layer.gamma = torch::rand({s.c_out}, opts).add_(0.5);
  layer.beta = torch::randn({s.c_out}, opts).mul_(0.1);
  layer.zero_points = torch::zeros({s.c_out}, opts.dtype(torch::kInt));
  layer.stride = {1, 1};
  layer.padding = {s.k / 2, s.k / 2};
  layer.dilation = {1, 1};
  key = {index, act};
  return layer;
}

struct RunningStats {
  torch::Tensor mean, var;
  explicit RunningStats(int64_t channels)
      : mean(torch::zeros({channels}, torch::TensorOptions().device(fb::bench_device()))),
        var(torch::ones({channels}, torch::TensorOptions().device(fb::bench_device()))) {}
};

// --- fakequant ------------------------------------------------------------------------------

using ConvBnOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    at::Tensor&, at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, double, double,
    c10::string_view, bool, bool, bool, int64_t, int64_t, c10::string_view, double);
using ConvBnBackwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
    c10::string_view, bool, const c10::List<bool>&);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ours_forward(
    const Layer& l, const torch::Tensor& x, RunningStats& rs, c10::string_view mode) {
  static const auto op = fb::op<ConvBnOp>("fakequant::conv_bn_fake_quant");
  return op.call(x, l.weight, std::nullopt, l.gamma, l.beta, rs.mean, rs.var, l.stride, l.padding, l.dilation, 1,
                 kBnEps, kMomentum, mode, /*training=*/true, /*relu=*/true, /*quantize_weight=*/true, kQuantMin,
                 kQuantMax, "half_even", kWeightEps);
}

struct Grads {
  torch::Tensor input, weight, gamma, beta;
};

// Forward + backward as fakequant's autograd.Function (torch_ext/fakequant/ops/convbn.py) runs
// them: the backward gets the saved tensors (the unquantised weight as the convolution weight
// in batch-mode training, the quantised fold otherwise) and every output_mask entry set; the
// float64 parameter gradients are cast to the parameters' dtype.
std::pair<torch::Tensor, Grads> ours_step(const Layer& l, const torch::Tensor& x, const torch::Tensor& grad_out,
                                          RunningStats& rs, c10::string_view mode) {
  static const auto backward = fb::op<ConvBnBackwardOp>("fakequant::conv_bn_fake_quant_backward");
  auto [y, pre_bn, weight_q, weight_mask, relu_mask, channel_state] = ours_forward(l, x, rs, mode);
  const at::Tensor& conv_weight = mode == "batch" ? l.weight : weight_q;
  auto [gx, gw, gp] = backward.call(grad_out, x, l.weight, pre_bn, conv_weight, weight_mask, relu_mask, channel_state,
                                    l.stride, l.padding, l.dilation, 1, mode, /*training=*/true,
                                    c10::List<bool>({true, true, true}));
  return {y, Grads{gx, gw, gp[0].to(l.gamma.scalar_type()), gp[1].to(l.beta.scalar_type())}};
}

// --- ATen -----------------------------------------------------------------------------------

// Parameters as autograd leaves (aliases of the layer's tensors, so the forward benchmarks see
// tensors that do not require grad). torch::autograd::grad returns the gradients without
// accumulating them into .grad.
struct Leaves {
  std::vector<torch::Tensor> x;
  torch::Tensor weight, gamma, beta;
  explicit Leaves(const Layer& l)
      : weight(l.weight.detach().requires_grad_()),
        gamma(l.gamma.detach().requires_grad_()),
        beta(l.beta.detach().requires_grad_()) {
    for (const auto& t : l.x) x.push_back(t.detach().requires_grad_());
  }
};

// torch.ao.nn.intrinsic.qat.ConvBnReLU2d._forward_approximate (no conv bias) with the
// per-channel symmetric weight fake quant (PerChannelMinMaxObserver's scale of the current
// fold, computed without grad as the observer does).
torch::Tensor aten_running(const Layer& l, const torch::Tensor& x, const torch::Tensor& weight,
                           const torch::Tensor& gamma, const torch::Tensor& beta, RunningStats& rs) {
  const torch::Tensor running_std = at::sqrt(rs.var + kBnEps);
  const torch::Tensor scale_factor = gamma / running_std;
  const torch::Tensor w_fold = weight * scale_factor.reshape({-1, 1, 1, 1});
  torch::Tensor scale;
  {
    at::NoGradGuard no_grad;
    scale = at::clamp_min(at::amax(at::abs(w_fold), {1, 2, 3}) / kHalfRange, kWeightEps);
  }
  const torch::Tensor wq = at::fake_quantize_per_channel_affine(w_fold, scale, l.zero_points, 0, kQuantMin, kQuantMax);
  const torch::Tensor conv = at::conv2d(x, wq.to(x.scalar_type()), {}, l.stride, l.padding);
  const torch::Tensor conv_orig = conv / scale_factor.reshape({1, -1, 1, 1}).to(conv.scalar_type());
  const torch::Tensor y =
      at::batch_norm(conv_orig, gamma, beta, rs.mean, rs.var, /*training=*/true, kMomentum, kBnEps, true);
  return at::relu(y);
}

// bench/bench_convbn_step.py's linger_composite: conv + training batch_norm (the unfused
// branch, for the gradient), the batch statistics and the quantised fold without grad, the
// fused convolution, y = unfused + (fused - unfused).detach(), Q's mask on the weight
// gradient, ReLU.
torch::Tensor aten_batch(const Layer& l, const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& gamma, const torch::Tensor& beta, RunningStats& rs) {
  const torch::Tensor w = weight.view_as(weight);  // Q's mask hooks this branch's gradient
  const torch::Tensor z = at::conv2d(x, w.to(x.scalar_type()), {}, l.stride, l.padding);
  const torch::Tensor unfused =
      at::batch_norm(z, gamma, beta, rs.mean, rs.var, /*training=*/true, kMomentum, kBnEps, true);
  torch::Tensor fused, mask;
  {
    at::NoGradGuard no_grad;
    const torch::Tensor zf = z.to(torch::kFloat);
    const torch::Tensor mean = zf.mean({0, 2, 3});
    const torch::Tensor var = at::var(zf, {0, 2, 3}, /*unbiased=*/false, /*keepdim=*/false);
    const torch::Tensor s = gamma / at::sqrt(var + kBnEps);
    const torch::Tensor fold = weight * s.reshape({-1, 1, 1, 1});
    const torch::Tensor scale = at::clamp_min(fold.abs().amax({1, 2, 3}) / kHalfRange, kWeightEps);
    const torch::Tensor q = at::round(fold / scale.reshape({-1, 1, 1, 1}));
    mask = ((q >= kQuantMin) & (q <= kQuantMax)).to(fold.scalar_type());
    const torch::Tensor wq = at::fake_quantize_per_channel_affine(fold, scale, l.zero_points, 0, kQuantMin, kQuantMax);
    const torch::Tensor shift = (beta - s * mean).reshape({1, -1, 1, 1}).to(x.scalar_type());
    fused = at::conv2d(x, wq.to(x.scalar_type()), {}, l.stride, l.padding) + shift;
  }
  if (w.requires_grad()) {
    w.register_hook([mask](const torch::Tensor& g) { return g * mask.to(g.scalar_type()); });
  }
  const torch::Tensor y = unfused + (fused - unfused).detach();
  return at::relu(y);
}

using AtenLayerFn = torch::Tensor (*)(const Layer&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                      const torch::Tensor&, RunningStats&);

std::pair<torch::Tensor, Grads> aten_step(AtenLayerFn fn, const Layer& l, const Leaves& p, size_t set,
                                          RunningStats& rs) {
  const torch::Tensor& x = p.x[set];
  const torch::Tensor y = fn(l, x, p.weight, p.gamma, p.beta, rs);
  const auto g = torch::autograd::grad({y}, {x, p.weight, p.gamma, p.beta}, {l.grad_out[set]});
  return {y, Grads{g[0], g[1], g[2], g[3]}};
}

// --- benchmarks -----------------------------------------------------------------------------

// What every ConvBN benchmark runs on: the layer of its `shape` argument with activations of its
// `dtype` argument (the run labelled with the layer), and running statistics of its own.
struct LayerRun {
  const ConvBnShape& s;
  torch::ScalarType act;
  const Layer& l;
  RunningStats rs;
  explicit LayerRun(benchmark::State& state)
      : s(kShapes[state.range(2)]),
        act(fb::dtype_arg(state.range(1))),
        l(layer_for(state.range(2), act)),
        rs(s.c_out) {
    state.SetLabel(layer_label(s));
  }

  // Times `body(i)` with the counters of a forward or a step (`step`) of `convs` convolutions.
  template <typename Body>
  void time(benchmark::State& state, bool step, int convs, const Body& body) {
    fb::time_op(state, step ? step_bytes(s, act) : forward_bytes(s, act), fb::numel_of(input_shape(s)), body);
    state.counters["GFLOP/s"] =
        benchmark::Counter(convs * conv_flops(s) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  }
};

void BM_ConvBnForward_fakequant(benchmark::State& state) {
  LayerRun r(state);
  r.time(state, /*step=*/false, 1, [&](int64_t i) { return ours_forward(r.l, fb::rotate(r.l.x, i), r.rs, "running"); });
}

void BM_ConvBnForward_aten(benchmark::State& state) {
  LayerRun r(state);
  r.time(state, /*step=*/false, 1, [&](int64_t i) {
    return aten_running(r.l, fb::rotate(r.l.x, i), r.l.weight, r.l.gamma, r.l.beta, r.rs);
  });
}

// Running mode: forward, data and weight gradient convolutions. Batch mode: two forward
// convolutions and the two gradient ones.
template <bool kBatch>
void BM_ConvBnStep_fakequant(benchmark::State& state) {
  LayerRun r(state);
  r.time(state, /*step=*/true, kBatch ? 4 : 3, [&](int64_t i) {
    const size_t set = i % r.l.x.size();
    return ours_step(r.l, r.l.x[set], r.l.grad_out[set], r.rs, kBatch ? "batch" : "running");
  });
}

template <bool kBatch>
void BM_ConvBnStep_aten(benchmark::State& state) {
  LayerRun r(state);
  const Leaves p(r.l);
  r.time(state, /*step=*/true, kBatch ? 4 : 3,
         [&](int64_t i) { return aten_step(kBatch ? aten_batch : aten_running, r.l, p, i % r.l.x.size(), r.rs); });
}

// Layers of the mode (full or quick) within FAKEQUANT_BENCH_MAX_NUMEL, fp32 and bf16.
void convbn_args(benchmark::internal::Benchmark* b) {
  for (const int64_t dtype : {0, 1}) {
    for (int64_t i = 0; i < static_cast<int64_t>(kShapes.size()); ++i) {
      const ConvBnShape& s = kShapes[i];
      if (s.quick != fb::quick_mode()) continue;
      const int64_t numel = fb::numel_of(input_shape(s));
      if (std::max(numel, fb::numel_of(output_shape(s))) > fb::max_numel()) continue;
      b->Args({numel, dtype, i});
    }
  }
  b->ArgNames({"numel", "dtype", "shape"});
  fb::configure(b);
}

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"ConvBnForward", BM_ConvBnForward_fakequant, BM_ConvBnForward_aten, convbn_args},
    {"ConvBnStep", BM_ConvBnStep_fakequant<false>, BM_ConvBnStep_aten<false>, convbn_args},
    {"ConvBnBatchStep", BM_ConvBnStep_fakequant<true>, BM_ConvBnStep_aten<true>, convbn_args},
});

}  // namespace
