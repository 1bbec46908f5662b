// Reductions and fused observers against the ATen way of doing the same job, in the same
// binary as the quant-dequant benchmarks (main() lives in bench_fake_quant.cpp). Arguments:
// {numel, dtype code}. Bytes counted are what each op must move: the input read once, the
// output written and its own mask (1 bit per element for fakequant, 1 byte for ATen's bool).

#include <cstdlib>
#include <tuple>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kChannels = 64;

double must_move(int64_t n, torch::ScalarType dtype, int64_t mask_bytes) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + mask_bytes);
}

std::vector<torch::Tensor> inputs(int64_t n, torch::ScalarType dtype, bool per_channel) {
  std::vector<torch::Tensor> x;
  for (const auto& t : fb::random_sets(n, dtype, fb::rotation_sets(2 * n * torch::elementSize(dtype)), 2.0))
    x.push_back(per_channel ? t.view({kChannels, n / kChannels}) : t);
  return x;
}

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
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, kPerChannel);
  MinMaxState s(kPerChannel ? kChannels : 1);
  static const auto op = fb::op<FusedObserverOp>("fakequant::fused_moving_avg_obs_fake_quant");
  const std::optional<int64_t> axis = kPerChannel ? std::optional<int64_t>(0) : std::nullopt;
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(x[i % x.size()], s.observer_on, s.fake_quant_on, s.running_min, s.running_max, s.scale,
                       s.zero_point, 0.01, 0, 255, axis, false, false, "half_even");
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, must_move(n, dtype, (n + 7) / 8), n);
}

template <bool kPerChannel>
void BM_FusedObserver_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, kPerChannel);
  MinMaxState s(kPerChannel ? kChannels : 1);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::_fused_moving_avg_obs_fq_helper(x[i % x.size()], s.observer_on, s.fake_quant_on, s.running_min,
                                                   s.running_max, s.scale, s.zero_point, 0.01, 0, 255, 0,
                                                   kPerChannel, false);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, must_move(n, dtype, n), n);
}

// --- Paddle moving_average_abs_max --------------------------------------------------------

using MovingAverageAbsMaxOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::Tensor&, at::Tensor&,
                                                                 at::Tensor&, double, int64_t, bool, c10::string_view);

void BM_MovingAverageAbsMax_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, false);
  auto scale = torch::zeros({1}, opts(torch::kFloat)), st = scale.clone(), accum = scale.clone();
  static const auto op = fb::op<MovingAverageAbsMaxOp>("fakequant::fake_quant_moving_average_abs_max");
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(x[i % x.size()], scale, st, accum, 0.9, 8, true, "half_even");
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, must_move(n, dtype, (n + 7) / 8), n);
}

// The same job from ATen ops (what a Paddle-style observer written in PyTorch runs): abs-max,
// the state update as tensor ops, then the tensor-qparam fake quant.
void BM_MovingAverageAbsMax_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, false);
  auto scale = torch::zeros({1}, opts(torch::kFloat)), st = scale.clone(), accum = scale.clone();
  auto zero_point = torch::zeros({1}, opts(torch::kInt));
  auto enabled = torch::ones({1}, opts(torch::kLong));
  fb::run_timed(state, [&](int64_t i) {
    const auto& xi = x[i % x.size()];
    auto cur = xi.abs().amax().to(torch::kFloat);
    st.mul_(0.9).add_(1.0);
    accum.mul_(0.9).add_(cur);
    at::div_out(scale, accum, st);
    auto step = (scale / 127.0).clamp_min(1.17549435e-38f);
    auto out = at::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(xi, step, zero_point, enabled, -127, 127);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, must_move(n, dtype, n), n);
}

// --- Reductions ----------------------------------------------------------------------------

using MinMaxOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, std::optional<int64_t>);

void BM_MinMax_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, false);
  static const auto op = fb::op<MinMaxOp>("fakequant::min_max");
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(x[i % x.size()], std::nullopt);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, static_cast<double>(n * torch::elementSize(dtype)), n);
}

void BM_MinMax_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, false);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::aminmax(x[i % x.size()]);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, static_cast<double>(n * torch::elementSize(dtype)), n);
}

// abs_max: ATen has no abs-max reduction; the fastest ATen way differs by device. On the GPU
// linalg_vector_norm(x, inf) reduces |x| in one pass; on the CPU it is about 15 times slower
// than abs() then amax() (measured: 12.2 ms against 0.79 ms at 4M fp32 elements, 2 threads),
// so the CPU pair runs abs() + amax() (one extra read and write of x).
torch::Tensor aten_abs_max(const torch::Tensor& x, at::OptionalIntArrayRef dim) {
  if (fb::use_cuda()) return at::linalg_vector_norm(x, INFINITY, dim, false, std::nullopt);
  return dim.has_value() ? at::amax(at::abs(x), *dim) : at::amax(at::abs(x));
}

using AbsMaxOp = at::Tensor(const at::Tensor&, std::optional<int64_t>);

template <bool kPerChannel>
void BM_AbsMax_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, kPerChannel);
  static const auto op = fb::op<AbsMaxOp>("fakequant::abs_max");
  const std::optional<int64_t> axis = kPerChannel ? std::optional<int64_t>(0) : std::nullopt;
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(x[i % x.size()], axis);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, static_cast<double>(n * torch::elementSize(dtype)), n);
}

template <bool kPerChannel>
void BM_AbsMax_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, kPerChannel);
  const std::vector<int64_t> rows{1};
  fb::run_timed(state, [&](int64_t i) {
    auto out = kPerChannel ? aten_abs_max(x[i % x.size()], rows) : aten_abs_max(x[i % x.size()], std::nullopt);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, static_cast<double>(n * torch::elementSize(dtype)), n);
}

// Per-channel min/max along axis 0 of [64, numel/64] against at::aminmax over dim 1.
void BM_MinMaxPerChannel_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, true);
  static const auto op = fb::op<MinMaxOp>("fakequant::min_max");
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(x[i % x.size()], 0);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, static_cast<double>(n * torch::elementSize(dtype)), n);
}

void BM_MinMaxPerChannel_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, true);
  fb::run_timed(state, [&](int64_t i) {
    auto out = at::aminmax(x[i % x.size()], 1);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, static_cast<double>(n * torch::elementSize(dtype)), n);
}

// --- Paddle range_abs_max -------------------------------------------------------------------

constexpr int64_t kWindow = 10000;  // Paddle's default window_size

using RangeAbsMaxOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                                                         int64_t, bool, c10::string_view);

void BM_RangeAbsMax_fakequant(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, false);
  auto scale = torch::zeros({1}, opts(torch::kFloat)), window = torch::zeros({kWindow}, opts(torch::kFloat));
  auto iter = torch::zeros({1}, opts(torch::kLong));
  static const auto op = fb::op<RangeAbsMaxOp>("fakequant::fake_quant_range_abs_max");
  fb::run_timed(state, [&](int64_t i) {
    auto out = op.call(x[i % x.size()], scale, window, iter, 8, true, "half_even");
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, must_move(n, dtype, (n + 7) / 8), n);
}

// The same job from ATen ops without a host read: abs-max, written into the window at
// iter % window_size, scale = max over the window (what Paddle's rule keeps: the window starts
// at zero and holds non-negative values), iter + 1, then the tensor-qparam fake quant.
void BM_RangeAbsMax_aten(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto dtype = fb::dtype_arg(state.range(1));
  auto x = inputs(n, dtype, false);
  auto scale = torch::zeros({1}, opts(torch::kFloat)), window = torch::zeros({kWindow}, opts(torch::kFloat));
  auto iter = torch::zeros({1}, opts(torch::kLong));
  auto zero_point = torch::zeros({1}, opts(torch::kInt));
  auto enabled = torch::ones({1}, opts(torch::kLong));
  fb::run_timed(state, [&](int64_t i) {
    const auto& xi = x[i % x.size()];
    auto cur = xi.abs().amax().to(torch::kFloat).view({1});
    window.index_copy_(0, at::remainder(iter, kWindow), cur);
    at::amax_out(scale, window, {0}, true);
    iter.add_(1);
    auto step = (scale / 127.0).clamp_min(1.17549435e-38f);
    auto out = at::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(xi, step, zero_point, enabled, -127, 127);
    benchmark::DoNotOptimize(out);
  });
  fb::set_bandwidth(state, must_move(n, dtype, n), n);
}

// ATen's fused observer takes float32 only.
void fp32_sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0}); }
void all_sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }

}  // namespace

BENCHMARK(BM_FusedObserver_fakequant<false>)->Name("BM_FusedObserverPerTensor_fakequant")->Apply(fp32_sizes);
BENCHMARK(BM_FusedObserver_aten<false>)->Name("BM_FusedObserverPerTensor_aten")->Apply(fp32_sizes);
BENCHMARK(BM_FusedObserver_fakequant<true>)->Name("BM_FusedObserverPerChannel_fakequant")->Apply(fp32_sizes);
BENCHMARK(BM_FusedObserver_aten<true>)->Name("BM_FusedObserverPerChannel_aten")->Apply(fp32_sizes);
BENCHMARK(BM_MovingAverageAbsMax_fakequant)->Apply(all_sizes);
BENCHMARK(BM_MovingAverageAbsMax_aten)->Apply(all_sizes);
BENCHMARK(BM_MinMax_fakequant)->Apply(all_sizes);
BENCHMARK(BM_MinMax_aten)->Apply(all_sizes);
BENCHMARK(BM_AbsMax_fakequant<false>)->Name("BM_AbsMax_fakequant")->Apply(all_sizes);
BENCHMARK(BM_AbsMax_aten<false>)->Name("BM_AbsMax_aten")->Apply(all_sizes);
BENCHMARK(BM_AbsMax_fakequant<true>)->Name("BM_AbsMaxPerChannel_fakequant")->Apply(all_sizes);
BENCHMARK(BM_AbsMax_aten<true>)->Name("BM_AbsMaxPerChannel_aten")->Apply(all_sizes);
BENCHMARK(BM_MinMaxPerChannel_fakequant)->Apply(all_sizes);
BENCHMARK(BM_MinMaxPerChannel_aten)->Apply(all_sizes);
BENCHMARK(BM_RangeAbsMax_fakequant)->Apply(all_sizes);
BENCHMARK(BM_RangeAbsMax_aten)->Apply(all_sizes);
