// Reductions and fused observers against the ATen way of doing the same job, in the same
// binary as the quant-dequant benchmarks (main() lives in bench_fake_quant.cpp). Arguments:
// {numel, dtype code}. Bytes counted are what each op must move: the input read once, the
// output written and its own mask (1 bit per element for fakequant, 1 byte for ATen's bool).

#include <cstdlib>
#include <tuple>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

using fb::Mask;

constexpr int64_t kChannels = 64;

// Rotating inputs of the run's numel and dtype, [numel] or (per channel) [64, numel / 64].
std::vector<torch::Tensor> inputs(const fb::SweepPoint& p, bool per_channel) {
  std::vector<torch::Tensor> x;
  for (const auto& t : fb::rotating_inputs(p.n, p.dtype, 2.0))
    x.push_back(per_channel ? t.view({kChannels, p.n / kChannels}) : t);
  return x;
}

// The bytes of an observer with fake quant (fb::quant_dequant_bytes: its input, output and mask).
double quant_dequant_bytes(const fb::SweepPoint& p, Mask mask) { return fb::quant_dequant_bytes(p.n, p.dtype, mask); }

torch::TensorOptions opts(torch::ScalarType t) { return torch::TensorOptions().dtype(t).device(fb::bench_device()); }

// --- PyTorch moving-average min/max observer + fake quant -------------------------------

struct MinMaxState {
  torch::Tensor observer_on, fake_quant_on, running_min, running_max, scale, zero_point;
  explicit MinMaxState(int64_t channels)
      : observer_on(torch::ones({1}, opts(torch::kLong))),
        fake_quant_on(torch::ones({1}, opts(torch::kLong))),
        running_min(torch::full({channels}, INFINITY, opts(torch::kFloat))),
        running_max(torch::full({channels}, -INFINITY, opts(torch::kFloat))),
        scale(torch::ones({channels}, opts(torch::kFloat))),
        zero_point(torch::zeros({channels}, opts(torch::kInt))) {}
};

using FusedObserverOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, double,
                                                           int64_t, int64_t, std::optional<int64_t>, bool, bool,
                                                           c10::string_view);

template <bool kPerChannel>
void BM_FusedObserver_fakequant(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, kPerChannel);
  MinMaxState s(kPerChannel ? kChannels : 1);
  static const auto op = fb::op<FusedObserverOp>("fakequant::fused_moving_avg_obs_fake_quant");
  const std::optional<int64_t> axis = kPerChannel ? std::optional<int64_t>(0) : std::nullopt;
  fb::time_op(state, quant_dequant_bytes(p, Mask::kPacked), p.n, [&](int64_t i) {
    return op.call(fb::rotate(x, i), s.observer_on, s.fake_quant_on, s.running_min, s.running_max, s.scale,
                   s.zero_point, 0.01, 0, 255, axis, false, false, "half_even");
  });
}

template <bool kPerChannel>
void BM_FusedObserver_aten(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, kPerChannel);
  MinMaxState s(kPerChannel ? kChannels : 1);
  fb::time_op(state, quant_dequant_bytes(p, Mask::kBool), p.n, [&](int64_t i) {
    return at::_fused_moving_avg_obs_fq_helper(fb::rotate(x, i), s.observer_on, s.fake_quant_on, s.running_min,
                                               s.running_max, s.scale, s.zero_point, 0.01, 0, 255, 0, kPerChannel,
                                               false);
  });
}

// --- Paddle abs-max observers ---------------------------------------------------------------

// The end of the ATen composites of Paddle's abs-max observers: the tensor-qparam fake quant in
// [-127, 127] with step = scale / 127 (at least the smallest normal float) and zero point 0.
struct AtenAbsMaxFakeQuant {
  torch::Tensor zero_point = torch::zeros({1}, opts(torch::kInt));
  torch::Tensor enabled = torch::ones({1}, opts(torch::kLong));
  std::tuple<at::Tensor, at::Tensor> operator()(const torch::Tensor& x, const torch::Tensor& scale) const {
    auto step = (scale / 127.0).clamp_min(1.17549435e-38f);
    return at::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(x, step, zero_point, enabled, -127, 127);
  }
};

// Paddle moving_average_abs_max.
using MovingAverageAbsMaxOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::Tensor&, at::Tensor&,
                                                                 at::Tensor&, double, int64_t, bool, c10::string_view);

void BM_MovingAverageAbsMax_fakequant(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, false);
  auto scale = torch::zeros({1}, opts(torch::kFloat)), st = scale.clone(), accum = scale.clone();
  static const auto op = fb::op<MovingAverageAbsMaxOp>("fakequant::fake_quant_moving_average_abs_max");
  fb::time_op(state, quant_dequant_bytes(p, Mask::kPacked), p.n,
              [&](int64_t i) { return op.call(fb::rotate(x, i), scale, st, accum, 0.9, 8, true, "half_even"); });
}

// The same job from ATen ops (what a Paddle-style observer written in PyTorch runs): abs-max,
// the state update as tensor ops, then the tensor-qparam fake quant.
void BM_MovingAverageAbsMax_aten(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, false);
  auto scale = torch::zeros({1}, opts(torch::kFloat)), st = scale.clone(), accum = scale.clone();
  const AtenAbsMaxFakeQuant fake_quant;
  fb::time_op(state, quant_dequant_bytes(p, Mask::kBool), p.n, [&](int64_t i) {
    const auto& xi = fb::rotate(x, i);
    auto cur = xi.abs().amax().to(torch::kFloat);
    st.mul_(0.9).add_(1.0);
    accum.mul_(0.9).add_(cur);
    at::div_out(scale, accum, st);
    return fake_quant(xi, scale);
  });
}

// Paddle range_abs_max.
constexpr int64_t kWindow = 10000;  // Paddle's default window_size

using RangeAbsMaxOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                                                         int64_t, bool, c10::string_view);

// Its state: the scale, the window of abs-maxes and the iteration count.
struct RangeState {
  torch::Tensor scale = torch::zeros({1}, opts(torch::kFloat));
  torch::Tensor window = torch::zeros({kWindow}, opts(torch::kFloat));
  torch::Tensor iter = torch::zeros({1}, opts(torch::kLong));
};

void BM_RangeAbsMax_fakequant(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, false);
  RangeState s;
  static const auto op = fb::op<RangeAbsMaxOp>("fakequant::fake_quant_range_abs_max");
  fb::time_op(state, quant_dequant_bytes(p, Mask::kPacked), p.n,
              [&](int64_t i) { return op.call(fb::rotate(x, i), s.scale, s.window, s.iter, 8, true, "half_even"); });
}

// The same job from ATen ops without a host read: abs-max, written into the window at
// iter % window_size, scale = max over the window (what Paddle's rule keeps: the window starts
// at zero and holds non-negative values), iter + 1, then the tensor-qparam fake quant.
void BM_RangeAbsMax_aten(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, false);
  RangeState s;
  const AtenAbsMaxFakeQuant fake_quant;
  fb::time_op(state, quant_dequant_bytes(p, Mask::kBool), p.n, [&](int64_t i) {
    const auto& xi = fb::rotate(x, i);
    auto cur = xi.abs().amax().to(torch::kFloat).view({1});
    s.window.index_copy_(0, at::remainder(s.iter, kWindow), cur);
    at::amax_out(s.scale, s.window, {0}, true);
    s.iter.add_(1);
    return fake_quant(xi, s.scale);
  });
}

// --- Reductions ----------------------------------------------------------------------------

// A reduction benchmark: `reduce(x)` timed on the run's inputs, which it reads once (the
// output is a few bytes).
template <typename Reduce>
void reduction(benchmark::State& state, bool per_channel, const Reduce& reduce) {
  const fb::SweepPoint p = fb::sweep_point(state);
  const auto x = inputs(p, per_channel);
  fb::time_op(state, static_cast<double>(p.n * torch::elementSize(p.dtype)), p.n,
              [&](int64_t i) { return reduce(fb::rotate(x, i)); });
}

using MinMaxOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, std::optional<int64_t>);

std::tuple<at::Tensor, at::Tensor> ours_min_max(const torch::Tensor& x, std::optional<int64_t> axis) {
  static const auto op = fb::op<MinMaxOp>("fakequant::min_max");
  return op.call(x, axis);
}

void BM_MinMax_fakequant(benchmark::State& state) {
  reduction(state, false, [](const torch::Tensor& x) { return ours_min_max(x, std::nullopt); });
}

void BM_MinMax_aten(benchmark::State& state) {
  reduction(state, false, [](const torch::Tensor& x) { return at::aminmax(x); });
}

// abs_max: ATen has no abs-max reduction; the fastest ATen way differs by device. On the GPU
// linalg_vector_norm(x, inf) reduces |x| in one pass; on the CPU it is far slower than abs()
// then amax() (docs/perf-notes.md, "Method"), so the CPU pair runs abs() + amax() (one extra
// read and write of x).
torch::Tensor aten_abs_max(const torch::Tensor& x, at::OptionalIntArrayRef dim) {
  if (fb::use_cuda()) return at::linalg_vector_norm(x, INFINITY, dim, false, std::nullopt);
  return dim.has_value() ? at::amax(at::abs(x), *dim) : at::amax(at::abs(x));
}

using AbsMaxOp = at::Tensor(const at::Tensor&, std::optional<int64_t>);

template <bool kPerChannel>
void BM_AbsMax_fakequant(benchmark::State& state) {
  static const auto op = fb::op<AbsMaxOp>("fakequant::abs_max");
  const std::optional<int64_t> axis = kPerChannel ? std::optional<int64_t>(0) : std::nullopt;
  reduction(state, kPerChannel, [&](const torch::Tensor& x) { return op.call(x, axis); });
}

template <bool kPerChannel>
void BM_AbsMax_aten(benchmark::State& state) {
  const std::vector<int64_t> rows{1};
  reduction(state, kPerChannel, [&](const torch::Tensor& x) {
    return kPerChannel ? aten_abs_max(x, rows) : aten_abs_max(x, std::nullopt);
  });
}

// Per-channel min/max along axis 0 of [64, numel/64] against at::aminmax over dim 1.
void BM_MinMaxPerChannel_fakequant(benchmark::State& state) {
  reduction(state, true, [](const torch::Tensor& x) { return ours_min_max(x, 0); });
}

void BM_MinMaxPerChannel_aten(benchmark::State& state) {
  reduction(state, true, [](const torch::Tensor& x) { return at::aminmax(x, 1); });
}

// ATen's fused observer takes float32 only.
void fp32_sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0}); }
void all_sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"FusedObserverPerTensor", BM_FusedObserver_fakequant<false>, BM_FusedObserver_aten<false>, fp32_sizes},
    {"FusedObserverPerChannel", BM_FusedObserver_fakequant<true>, BM_FusedObserver_aten<true>, fp32_sizes},
    {"MovingAverageAbsMax", BM_MovingAverageAbsMax_fakequant, BM_MovingAverageAbsMax_aten, all_sizes},
    {"MinMax", BM_MinMax_fakequant, BM_MinMax_aten, all_sizes},
    {"AbsMax", BM_AbsMax_fakequant<false>, BM_AbsMax_aten<false>, all_sizes},
    {"AbsMaxPerChannel", BM_AbsMax_fakequant<true>, BM_AbsMax_aten<true>, all_sizes},
    {"MinMaxPerChannel", BM_MinMaxPerChannel_fakequant, BM_MinMaxPerChannel_aten, all_sizes},
    {"RangeAbsMax", BM_RangeAbsMax_fakequant, BM_RangeAbsMax_aten, all_sizes},
});

}  // namespace
