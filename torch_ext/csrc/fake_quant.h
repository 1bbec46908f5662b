// The device-neutral body of the quant-dequant family (fake_quant_per_tensor,
// fake_quant_per_channel, fake_quant_mask_backward): argument checks, output allocation and the
// op functions, over a backend table (FakeQuantBackend) that cpu/fake_quant.cpp and
// cuda/fake_quant.cpp fill and register with FakeQuantOps<backend>::register_all.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common.h"

namespace fakequant {
namespace ext {

struct PerTensorCall : FakeQuantBuffers {
  at::Tensor scale, zero_point;  // aligned (kept alive for the kernel)
  at::Tensor seed;  // contiguous int64 [2] (stochastic rounding) or undefined
  PerTensorQParams qparams;
};

// Checks everything that can be checked without reading tensor values (dtypes, shapes,
// devices, the quant range, the rounding name, the seed) and allocates the outputs.
PerTensorCall prepare_fake_quant_per_tensor(const at::Tensor& input, const at::Tensor& scale,
                                            const at::Tensor& zero_point, int64_t quant_min,
                                            int64_t quant_max, c10::string_view rounding,
                                            const std::optional<at::Tensor>& seed = std::nullopt);

// Value checks of scale / zero_point; only done where the values are on the host.
void check_per_tensor_qparam_values(const at::Tensor& scale, const at::Tensor& zero_point,
                                    int64_t quant_min, int64_t quant_max);

struct PerChannelCall : FakeQuantBuffers {
  at::Tensor scale, zero_point;  // contiguous (kept alive for the kernel)
  at::Tensor seed;               // contiguous int64 [2] (stochastic rounding) or undefined
  PerChannelQParams qparams;
};

// As above for per-channel qparams: scale float32 [C], zero_point int32 or float32 [C]
// with C = input.size(axis); axis in [-dim, dim).
PerChannelCall prepare_fake_quant_per_channel(const at::Tensor& input, const at::Tensor& scale,
                                              const at::Tensor& zero_point, int64_t axis, int64_t quant_min,
                                              int64_t quant_max, c10::string_view rounding,
                                              const std::optional<at::Tensor>& seed = std::nullopt);

void check_per_channel_qparam_values(const at::Tensor& scale, const at::Tensor& zero_point,
                                     int64_t quant_min, int64_t quant_max);

struct MaskedGradCall {
  at::Tensor grad_output;  // aligned (kept alive for the kernel)
  at::Tensor grad_input;
  MaskedGradArgs args;
};

MaskedGradCall prepare_masked_grad(const at::Tensor& grad_output, const at::Tensor& mask);

// What a backend does once the call is checked and its outputs allocated: check the qparam
// values where it can read them without a host synchronisation (the CPU), and run the kernel.
struct FakeQuantBackend {
  void (*per_tensor)(PerTensorCall& call, int64_t quant_min, int64_t quant_max);
  void (*per_channel)(PerChannelCall& call, int64_t quant_min, int64_t quant_max);
  void (*mask_backward)(MaskedGradCall& call);
};

// The op functions of the family for one backend, as the function pointers TORCH_LIBRARY_IMPL
// takes.
template <const FakeQuantBackend& B>
struct FakeQuantOps {
  static std::tuple<at::Tensor, at::Tensor> per_tensor(const at::Tensor& input, const at::Tensor& scale,
                                                       const at::Tensor& zero_point, int64_t quant_min,
                                                       int64_t quant_max, c10::string_view rounding,
                                                       const std::optional<at::Tensor>& seed) {
    PerTensorCall call = prepare_fake_quant_per_tensor(input, scale, zero_point, quant_min, quant_max, rounding, seed);
    B.per_tensor(call, quant_min, quant_max);
    return {call.output, call.mask};
  }
  static std::tuple<at::Tensor, at::Tensor> per_channel(const at::Tensor& input, const at::Tensor& scale,
                                                        const at::Tensor& zero_point, int64_t axis,
                                                        int64_t quant_min, int64_t quant_max,
                                                        c10::string_view rounding,
                                                        const std::optional<at::Tensor>& seed) {
    PerChannelCall call =
        prepare_fake_quant_per_channel(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
    B.per_channel(call, quant_min, quant_max);
    return {call.output, call.mask};
  }
  static at::Tensor mask_backward(const at::Tensor& grad_output, const at::Tensor& mask) {
    MaskedGradCall call = prepare_masked_grad(grad_output, mask);
    B.mask_backward(call);
    return call.grad_input;
  }
  static void register_all(torch::Library& m) {
    m.impl("fake_quant_per_tensor", &per_tensor);
    m.impl("fake_quant_per_channel", &per_channel);
    m.impl("fake_quant_mask_backward", &mask_backward);
  }
};

}  // namespace ext
}  // namespace fakequant
