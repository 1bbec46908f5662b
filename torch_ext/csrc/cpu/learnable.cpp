// CPU backend of the learnable-qparam (LSQ / LSQ+) ops (the op bodies: learnable.h): check the
// qparam values, run the CPU reference on ATen's intra-op threads. The backward's chunks are
// fixed by the data alone, so grad_scale / grad_zero_point do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../learnable.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

void forward(const char* op, LearnableForwardCall& call, bool per_channel) {
  check_learnable_qparam_values(op, call.scale, call.zero_point, per_channel);
  if (call.args.numel == 0) return;
  const LearnableQParams& lq = call.qparams;
  std::vector<float> scales(lq.channels);
  std::vector<int32_t> zero_points(lq.channels);
  learnable_forward_qparams(lq, scales.data(), zero_points.data());
  parallel_over_mask_groups(call.args.numel, [&](int64_t begin, int64_t end) {
    fake_quant_learnable_cpu_range(call.args, lq, scales.data(), zero_points.data(), begin, end);
  });
}

void backward(const char* op, LearnableBackwardCall& call, bool per_channel) {
  check_learnable_qparam_values(op, call.scale, call.zero_point, per_channel);
  const LearnableBackwardPlan plan = plan_learnable_backward_cpu(call.args, call.qparams);
  // Partial sums: [chunks][channels] doubles each, at most numel / 128 entries (+ one row).
  const size_t partial_entries = plan.reduce ? static_cast<size_t>(plan.chunks * plan.channels) : 0;
  std::vector<double> partial_scale(partial_entries), partial_zero_point(partial_entries);
  at::parallel_for(0, plan.chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double* ps = plan.reduce ? partial_scale.data() + k * plan.channels : nullptr;
      double* pz = plan.reduce ? partial_zero_point.data() + k * plan.channels : nullptr;
      learnable_backward_cpu_chunk(call.args, call.qparams, plan, k, ps, pz);
    }
  });
  if (plan.reduce) learnable_backward_cpu_finish(call.args, plan, partial_scale.data(), partial_zero_point.data());
}

constexpr LearnableBackend kCpu{&forward, &backward};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) { LearnableOps<kCpu>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
