// The device-neutral body of the learnable-qparam (LSQ / LSQ+) ops: argument checks, output
// allocation and the four op functions, over a backend table (LearnableBackend) that
// cpu/learnable.cpp and cuda/learnable.cpp fill and register with
// register_learnable_ops. Every backend rejects the same inputs with the same messages and
// allocates the same layouts.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "fakequant/learnable.h"

namespace fakequant {
namespace ext {

// One forward call: the dense input, its output, and the kernel arguments pointing at them.
struct LearnableForwardCall {
  at::Tensor input;                // dense
  at::Tensor output;               // empty_like(input)
  at::Tensor scale, zero_point;    // contiguous float32 (kept alive for the kernel)
  LearnableForwardArgs args;
  LearnableQParams qparams;
};

// axis: empty for the per-tensor op. Checks everything that needs no tensor values: dtypes,
// shapes, devices, axis, the quant range, grad_factor (finite as float32).
LearnableForwardCall prepare_learnable_forward(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                               const at::Tensor& zero_point, std::optional<int64_t> axis,
                                               int64_t quant_min, int64_t quant_max, double grad_factor);

struct LearnableBackwardCall {
  at::Tensor input, grad_output;                  // dense, grad_output laid out like input
  at::Tensor scale, zero_point;                   // contiguous float32
  at::Tensor grad_input, grad_scale, grad_zero_point;  // [0]-sized where output_mask is false
  LearnableBackwardArgs args;
  LearnableQParams qparams;
};

LearnableBackwardCall prepare_learnable_backward(const char* op, const at::Tensor& grad_output,
                                                 const at::Tensor& input, const at::Tensor& scale,
                                                 const at::Tensor& zero_point, std::optional<int64_t> axis,
                                                 int64_t quant_min, int64_t quant_max, double grad_factor,
                                                 std::array<bool, 3> output_mask);

// The backward's output_mask (grad_input, grad_scale, grad_zero_point), checked to hold 3 flags.
std::array<bool, 3> learnable_output_mask(const char* op, const c10::List<bool>& output_mask);

// Value checks of scale (finite, >= the smallest normal float32) and zero_point (finite),
// naming the channel for per-channel qparams; only done where the values are on the host.
void check_learnable_qparam_values(const char* op, const at::Tensor& scale, const at::Tensor& zero_point,
                                   bool per_channel);

// What a backend does once the call is checked and its outputs allocated: run the kernels
// (the CPU backend also checks the qparam values, which only it can read without a host
// synchronisation).
struct LearnableBackend {
  void (*forward)(const char* op, LearnableForwardCall& call, bool per_channel);
  void (*backward)(const char* op, LearnableBackwardCall& call, bool per_channel);
};

at::Tensor learnable_forward(const LearnableBackend& backend, const char* op, const at::Tensor& input,
                             const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
                             int64_t quant_min, int64_t quant_max, double grad_factor);

std::tuple<at::Tensor, at::Tensor, at::Tensor> learnable_backward(
    const LearnableBackend& backend, const char* op, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t quant_min,
    int64_t quant_max, double grad_factor, const c10::List<bool>& output_mask);

// The four ops of the family for one backend, as the function pointers TORCH_LIBRARY_IMPL takes.
template <const LearnableBackend& B>
struct LearnableOps {
  static at::Tensor per_tensor(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                               int64_t quant_min, int64_t quant_max, double grad_factor) {
    return learnable_forward(B, "fakequant.fake_quant_learnable_per_tensor", input, scale, zero_point, std::nullopt,
                             quant_min, quant_max, grad_factor);
  }
  static at::Tensor per_channel(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                int64_t axis, int64_t quant_min, int64_t quant_max, double grad_factor) {
    return learnable_forward(B, "fakequant.fake_quant_learnable_per_channel", input, scale, zero_point, axis,
                             quant_min, quant_max, grad_factor);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> per_tensor_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
      int64_t quant_min, int64_t quant_max, double grad_factor, const c10::List<bool>& output_mask) {
    return learnable_backward(B, "fakequant.fake_quant_learnable_per_tensor_backward", grad_output, input, scale,
                              zero_point, std::nullopt, quant_min, quant_max, grad_factor, output_mask);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> per_channel_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
      int64_t axis, int64_t quant_min, int64_t quant_max, double grad_factor, const c10::List<bool>& output_mask) {
    return learnable_backward(B, "fakequant.fake_quant_learnable_per_channel_backward", grad_output, input, scale,
                              zero_point, axis, quant_min, quant_max, grad_factor, output_mask);
  }
  static void register_all(torch::Library& m) {
    m.impl("fake_quant_learnable_per_tensor", &per_tensor);
    m.impl("fake_quant_learnable_per_tensor_backward", &per_tensor_backward);
    m.impl("fake_quant_learnable_per_channel", &per_channel);
    m.impl("fake_quant_learnable_per_channel_backward", &per_channel_backward);
  }
};

}  // namespace ext
}  // namespace fakequant
