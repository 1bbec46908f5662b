// Learnable scale / zero point (LSQ, LSQ+): the forward quant-dequant and the backward that
// returns gradients for the input, the scale and the zero point, with PyTorch's formulas
// (_fake_quantize_learnable_per_{tensor,channel}_affine). The scalar formulas are in
// quant_math.h; the contract is docs/numerics.md.
//
// The library knows nothing of LibTorch: tensors are raw pointers in memory order (callers
// pass dense tensors; grad_output laid out like the input).
#pragma once

#include <cstdint>
#include <vector>

#include "fakequant/fake_quant.h"

namespace fakequant {

// Per-tensor and per-channel use the same forward but round the zero point differently in
// the backward (quant_math.h: learnable_zero_point_backward_per_{tensor,channel}).
enum class LearnableKind : int32_t { kPerTensor = 0, kPerChannel = 1 };

// float32 scale and zero point, one per channel (channels = 1 per-tensor), in the memory
// space of the data. The channel of memory offset i is (i / channel_stride) % channels, as
// for PerChannelQParams.
struct LearnableQParams {
  const float* scale = nullptr;
  const float* zero_point = nullptr;
  LearnableKind kind = LearnableKind::kPerTensor;
  int64_t channels = 1;
  int64_t channel_stride = 1;
  int32_t quant_min = -128;
  int32_t quant_max = 127;
  float grad_factor = 1.0f;
};

struct LearnableForwardArgs {
  DType dtype = DType::kFloat32;
  const void* input = nullptr;
  void* output = nullptr;
  int64_t numel = 0;
};

// grad_output and input hold `numel` elements of `dtype` in the same memory order. Any of
// the three outputs may be null: it is then neither computed nor written (with both
// grad_scale and grad_zero_point null there is no reduction at all).
struct LearnableBackwardArgs {
  DType dtype = DType::kFloat32;
  const void* grad_output = nullptr;
  const void* input = nullptr;
  void* grad_input = nullptr;         // numel elements of dtype
  float* grad_scale = nullptr;        // [channels]
  float* grad_zero_point = nullptr;   // [channels]
  int64_t numel = 0;
};

// ---------------------------------------------------------------------------
// CPU reference.

// The qparams the forward quantises with: the integer zero point (learnable_zero_point_forward)
// and the scale, NaN for a channel whose qparams are out of contract (learnable_qparams_valid),
// which makes the ordinary quant-dequant poison that channel. Writes `channels` entries each.
// The forward itself is then fake_quant_learnable_cpu_range with these qparams.
void learnable_forward_qparams(const LearnableQParams& qp, float* scale_out, int32_t* zero_point_out);

// The forward of the mask groups [group_begin, group_end) (fake_quant_per_tensor_cpu_range for
// one channel, else fake_quant_per_channel_cpu_range, with no mask), quantising with the
// `scale` / `zero_point` that learnable_forward_qparams wrote.
void fake_quant_learnable_cpu_range(const LearnableForwardArgs& args, const LearnableQParams& qp, const float* scale,
                                    const int32_t* zero_point, int64_t group_begin, int64_t group_end);

// The whole forward, single-threaded.
void fake_quant_learnable_cpu(const LearnableForwardArgs& args, const LearnableQParams& qp);

// The backward is split into chunks of consecutive elements fixed by (numel, channels) alone,
// so the result does not depend on how many threads run them. Each chunk sums its elements'
// gradient terms in double into its own [channels] partial sums; the partials are combined in
// chunk order and rounded once to float. The partial buffers (chunks * channels doubles each)
// stay at most numel / 128 entries (plus one row), i.e. at most as many bytes as a 1-bit mask.
struct LearnableBackwardPlan {
  int64_t chunks = 1;
  int64_t chunk_elements = 0;
  int64_t channels = 1;
  bool reduce = false;  // grad_scale or grad_zero_point requested
  // Per-channel backward qparams: scale, fp32 1/scale, backward-rounded zero point, validity.
  std::vector<float> scale, inv_scale, zero_point;
  std::vector<uint8_t> valid;
};

LearnableBackwardPlan plan_learnable_backward_cpu(const LearnableBackwardArgs& args, const LearnableQParams& qp);

// Runs chunk `chunk` of the plan: writes its grad_input elements and (if plan.reduce) its
// partial sums partial_scale[0, channels) and partial_zero_point[0, channels) (overwritten).
void learnable_backward_cpu_chunk(const LearnableBackwardArgs& args, const LearnableQParams& qp,
                                  const LearnableBackwardPlan& plan, int64_t chunk, double* partial_scale,
                                  double* partial_zero_point);

// Combines the partials of all chunks ([chunks][channels] each) into grad_scale / grad_zero_point
// (those not null). With numel == 0 they become 0.
void learnable_backward_cpu_finish(const LearnableBackwardArgs& args, const LearnableBackwardPlan& plan,
                                   const double* partial_scale, const double* partial_zero_point);

// The whole backward, single-threaded (plan, every chunk in order, finish).
void fake_quant_learnable_backward_cpu(const LearnableBackwardArgs& args, const LearnableQParams& qp);

}  // namespace fakequant
