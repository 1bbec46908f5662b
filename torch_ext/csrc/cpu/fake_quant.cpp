// CPU backend of the quant-dequant family (the op bodies: fake_quant.h): check the qparam
// values, split the mask groups across ATen's intra-op threads, call the CPU reference.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../fake_quant.h"
#include "parallel.h"

namespace fakequant {
namespace ext {
namespace {

void per_tensor(PerTensorCall& call, int64_t quant_min, int64_t quant_max) {
  check_per_tensor_qparam_values(call.scale, call.zero_point, quant_min, quant_max);
  parallel_over_mask_groups(call.args.numel, [&](int64_t begin, int64_t end) {
    fake_quant_per_tensor_cpu_range(call.args, call.qparams, begin, end);
  });
}

void per_channel(PerChannelCall& call, int64_t quant_min, int64_t quant_max) {
  check_per_channel_qparam_values(call.scale, call.zero_point, quant_min, quant_max);
  parallel_over_mask_groups(call.args.numel, [&](int64_t begin, int64_t end) {
    fake_quant_per_channel_cpu_range(call.args, call.qparams, begin, end);
  });
}

void mask_backward(MaskedGradCall& call) {
  parallel_over_mask_groups(call.args.numel,
                            [&](int64_t begin, int64_t end) { masked_grad_cpu_range(call.args, begin, end); });
}

constexpr FakeQuantBackend kCpu{&per_tensor, &per_channel, &mask_backward};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CPU, m) { FakeQuantOps<kCpu>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
