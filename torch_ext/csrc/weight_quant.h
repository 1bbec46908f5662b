// Argument checks and output allocation of fake_quant_weight_abs_max, shared by the CPU and
// CUDA bindings (same messages, same layouts on every backend).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include "fakequant/weight_quant.h"

namespace fakequant {
namespace ext {

struct WeightAbsMaxCall {
  at::Tensor weight;  // dense
  at::Tensor output;  // empty_like(weight)
  at::Tensor mask;    // uint8 [mask_bytes(numel)]
  at::Tensor scale;   // float32 [C]
  WeightAbsMaxArgs args;
};

// Checks everything (no tensor values are read: the op computes its own qparams) and
// allocates the outputs. axis in [-dim, dim); symmetric range (check_symmetric_quant_range);
// eps finite and >= the smallest normal float32.
WeightAbsMaxCall prepare_fake_quant_weight_abs_max(const at::Tensor& weight, int64_t axis, int64_t quant_min,
                                                   int64_t quant_max, c10::string_view rounding, double eps);

}  // namespace ext
}  // namespace fakequant
