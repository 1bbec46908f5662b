// CPU backend of the reduction and fused-observer ops (the op bodies: observers.h): reduce in
// parallel into per-thread partials, update the observer state on the host, quant-dequant in
// parallel.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../observers.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

// Reduces `args` into out_a / out_b (args.channels floats each) on ATen's intra-op threads:
// each chunk folds into private accumulators, merged afterwards (min / max are exact in any
// order, so the result does not depend on the thread count).
void reduce_parallel(const ReduceArgs& args, ReduceKind kind, float* out_a, float* out_b) {
  const int64_t channels = args.channels;
  reduce_identity(kind, channels, out_a, out_b);
  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (args.numel + kChunkElements - 1) / kChunkElements));
  if (chunks == 1) return reduce_cpu_range(args, kind, 0, args.numel, out_a, out_b);
  std::vector<float> part_a(chunks * channels), part_b(kind == ReduceKind::kMinMax ? chunks * channels : 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float* a = part_a.data() + k * channels;
      float* b = part_b.empty() ? nullptr : part_b.data() + k * channels;
      reduce_identity(kind, channels, a, b);
      reduce_cpu_range(args, kind, args.numel * k / chunks, args.numel * (k + 1) / chunks, a, b);
    }
  });
  for (int64_t k = 0; k < chunks; ++k) {
    reduce_combine(kind, channels, part_a.data() + k * channels,
                   part_b.empty() ? nullptr : part_b.data() + k * channels, out_a, out_b);
  }
}

// max |x| over the whole input of a Paddle abs-max op.
float tensor_abs_max(const FakeQuantArgs& args) {
  float abs_max = 0.0f;
  reduce_parallel(ReduceArgs{args.dtype, args.input, args.numel}, ReduceKind::kAbsMax, &abs_max, nullptr);
  return abs_max;
}

template <typename QParams, typename Fn>
void quant_dequant_parallel(const FakeQuantArgs& args, const QParams& qp, Fn range_fn) {
  parallel_over_mask_groups(args.numel,
                   [&](int64_t begin, int64_t end) { range_fn(args, qp, begin, end); });
}

// Quant-dequant with a Paddle abs-max scale: step scale / bin_cnt, range [-bin_cnt, bin_cnt].
void quant_dequant_abs_max(const FakeQuantBuffers& b, float scale, int32_t bits, Rounding rounding) {
  const int32_t bin_cnt = abs_max_bin_cnt(bits);
  const float step = abs_max_step(scale, bin_cnt);
  const int32_t zero_point = 0;
  PerTensorQParams qp;
  qp.scale = &step;
  qp.zero_point = &zero_point;
  qp.quant_min = -bin_cnt;
  qp.quant_max = bin_cnt;
  qp.rounding = rounding;
  quant_dequant_parallel(b.args, qp, fake_quant_per_tensor_cpu_range);
}

void reduce(ReduceCall& call, ReduceKind kind) {
  reduce_parallel(call.args, kind, call.out_a.mutable_data_ptr<float>(),
                  kind == ReduceKind::kMinMax ? call.out_b.mutable_data_ptr<float>() : nullptr);
}

void moving_average_abs_max(MovingAverageAbsMaxCall& call, bool training) {
  if (call.args.numel == 0) return;
  // A non-finite batch leaves the state and gets a NaN scale (a poisoned output).
  const float use_scale =
      training ? moving_average_abs_max_update_cpu(call.state, tensor_abs_max(call.args)) : *call.state.scale;
  quant_dequant_abs_max(call, use_scale, call.bits, call.rounding);
}

void range_abs_max(RangeAbsMaxCall& call, bool training) {
  if (call.args.numel == 0) return;
  const float use_scale =
      training ? range_abs_max_update_cpu(call.state, tensor_abs_max(call.args)) : *call.state.scale;
  quant_dequant_abs_max(call, use_scale, call.bits, call.rounding);
}

void moving_average_min_max(MovingAverageMinMaxCall& call, bool per_tensor) {
  const MovingAverageMinMaxState& s = call.state;
  const bool observe = call.args.numel > 0 && *s.observer_on != 0;
  std::vector<float> current_min(observe ? s.channels : 0), current_max(observe ? s.channels : 0);
  if (observe) {
    ReduceArgs r{call.args.dtype, call.args.input, call.args.numel, s.channels, call.channel_stride};
    reduce_parallel(r, ReduceKind::kMinMax, current_min.data(), current_max.data());
  }
  std::vector<uint8_t> rejected(s.channels, 0);
  moving_average_min_max_update_cpu(s, current_min.data(), current_max.data(), observe, rejected.data());
  // The quant-dequant reads the stored qparams, with NaN scales for the channels whose step
  // was rejected (a non-finite batch statistic: poisoned, the state unchanged).
  std::vector<float> use_scale(s.scale, s.scale + s.channels);
  for (int64_t c = 0; c < s.channels; ++c) {
    if (rejected[c]) use_scale[c] = std::numeric_limits<float>::quiet_NaN();
  }
  if (s.channels == 1 && per_tensor) {
    quant_dequant_parallel(call.args, min_max_per_tensor_qparams(s, use_scale.data(), s.zero_point, call.rounding),
                           fake_quant_per_tensor_cpu_range);
  } else if (call.args.numel > 0) {
    quant_dequant_parallel(
        call.args, min_max_per_channel_qparams(s, use_scale.data(), s.zero_point, call.channel_stride, call.rounding),
        fake_quant_per_channel_cpu_range);
  }
}

constexpr ObserverBackend kCpu{/*host_values=*/true, &reduce, &moving_average_abs_max, &range_abs_max,
                               &moving_average_min_max};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) { ObserverOps<kCpu>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
