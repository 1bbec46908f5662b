// Public C++ API of the fakequant kernel library: argument structs, validation rules and
// the CPU reference. The CUDA launchers are declared in <fakequant/cuda/launch.h>.
//
// The library knows nothing of LibTorch: tensors are raw pointers plus an element count,
// processed in memory order (callers pass dense tensors).
#pragma once

#include <cstdint>
#include <string>

#include "fakequant/quant_math.h"

namespace fakequant {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

const char* dtype_name(DType dtype);

// Quantization ranges are expressed by quant_min/quant_max alone (bits, signedness and
// narrow range). Accepted: both bounds inside [kQuantBoundMin, kQuantBoundMax],
// quant_min <= quant_max, and at most 2^16 levels (16 bits).
constexpr int64_t kQuantBoundMin = -65536;
constexpr int64_t kQuantBoundMax = 65535;
constexpr int64_t kMaxQuantLevels = 65536;

// Validation shared by every binding. Each returns an empty string when the value is
// accepted, otherwise a message that names the argument and what is accepted.
std::string check_quant_range(int64_t quant_min, int64_t quant_max);
std::string check_scale_value(float scale);
std::string check_zero_point_value(int64_t zero_point, int64_t quant_min, int64_t quant_max);

// "half_even" | "half_away" | "stochastic". Returns false (and leaves `out` alone) for
// anything else.
bool parse_rounding(const std::string& name, Rounding* out);
const char* rounding_name(Rounding rounding);
constexpr const char* kAcceptedRoundings = "'half_even', 'half_away', 'stochastic'";

// The seed of stochastic rounding: two int64 values in the data's memory space, read by
// the kernel (never by the host on the GPU): seed[0] is the Philox key, seed[1] the high
// 64 bits of the Philox counter (docs/numerics.md, "Stochastic rounding"). Required when
// rounding is Rounding::kStochastic, ignored otherwise.
constexpr int64_t kSeedWords = 2;

// The training mask: one bit per element, bit (i % 8) of byte (i / 8), in memory order.
constexpr int64_t kMaskGroup = 8;
constexpr int64_t mask_bytes(int64_t numel) { return (numel + kMaskGroup - 1) / kMaskGroup; }

// Per-tensor quantization parameters. `scale` and `zero_point` point to one element each,
// in the same memory space as the data (host memory for the CPU reference, device
// memory for the CUDA kernels), so no host synchronisation is ever needed to read them.
struct PerTensorQParams {
  const float* scale = nullptr;
  const int32_t* zero_point = nullptr;
  int32_t quant_min = -128;
  int32_t quant_max = 127;
  Rounding rounding = Rounding::kHalfEven;
  const int64_t* seed = nullptr;  // [kSeedWords], Rounding::kStochastic only
  // Optional switch (one int64, same memory space): when it points to 0, the op passes the
  // input through unchanged with every mask bit set (torch.ao's disabled fake quant).
  const int64_t* enabled = nullptr;
};

// Per-channel quantization parameters along one axis. Elements are addressed in memory
// order; for a dense tensor the channel of the element at memory offset i is
// (i / channel_stride) % channels, where channel_stride is the axis' stride (in elements).
enum class ZeroPointType : int32_t {
  kInt32 = 0,    // integer zero point, added after rounding (ATen's int path)
  kFloat32 = 1,  // float zero point, added before rounding (ATen's float path)
};

struct PerChannelQParams {
  const float* scale = nullptr;     // [channels]
  const void* zero_point = nullptr;  // [channels], int32 or float32 per zero_point_type
  ZeroPointType zero_point_type = ZeroPointType::kInt32;
  int64_t channels = 1;
  int64_t channel_stride = 1;
  int32_t quant_min = -128;
  int32_t quant_max = 127;
  Rounding rounding = Rounding::kHalfEven;
  const int64_t* seed = nullptr;     // [kSeedWords], Rounding::kStochastic only
  const int64_t* enabled = nullptr;  // as in PerTensorQParams
};

// Float zero points must also lie inside [quant_min, quant_max] (ATen's rule).
FQ_HD bool qparams_valid_float_zp(float scale, float zero_point, int32_t quant_min, int32_t quant_max) {
  return scale >= 1.17549435e-38f && scale <= 3.40282347e+38f && zero_point >= quant_min &&
         zero_point <= quant_max;
}

// One quant-dequant pass: output[i] = Q(input[i]), mask bit i = in_range(input[i]).
// `mask` may be null (no mask is written). `input`/`output` hold `numel` elements of
// `dtype`; `mask` holds mask_bytes(numel) bytes.
struct FakeQuantArgs {
  DType dtype = DType::kFloat32;
  const void* input = nullptr;
  void* output = nullptr;
  uint8_t* mask = nullptr;
  int64_t numel = 0;
};

// Clipped straight-through backward: grad_input[i] = mask bit i ? grad_output[i] : 0.
struct MaskedGradArgs {
  DType dtype = DType::kFloat32;
  const void* grad_output = nullptr;
  const uint8_t* mask = nullptr;
  void* grad_input = nullptr;
  int64_t numel = 0;
};

// Out-of-contract qparams reaching a kernel (only possible where the binding cannot
// check values without a host synchronisation, i.e. on the GPU): every output element
// becomes NaN and every mask bit 0. Bindings reject such qparams up front on the CPU.
FQ_HD bool qparams_valid(float scale, int32_t zero_point, int32_t quant_min, int32_t quant_max) {
  return scale >= 1.17549435e-38f && scale <= 3.40282347e+38f && zero_point >= quant_min &&
         zero_point <= quant_max;
}

// CPU reference. The *_range variants process the mask groups [group_begin, group_end)
// (group g covers elements [8g, 8g + 8)), so a caller can split the work across threads
// on byte boundaries of the mask; the plain variants process everything. Stochastic
// rounding gives the same result however the work is split (its random words follow the
// element's offset); without a seed it throws std::invalid_argument.
void fake_quant_per_tensor_cpu_range(const FakeQuantArgs& args, const PerTensorQParams& qp,
                                     int64_t group_begin, int64_t group_end);
void fake_quant_per_tensor_cpu(const FakeQuantArgs& args, const PerTensorQParams& qp);

void fake_quant_per_channel_cpu_range(const FakeQuantArgs& args, const PerChannelQParams& qp,
                                      int64_t group_begin, int64_t group_end);
void fake_quant_per_channel_cpu(const FakeQuantArgs& args, const PerChannelQParams& qp);

void masked_grad_cpu_range(const MaskedGradArgs& args, int64_t group_begin, int64_t group_end);
void masked_grad_cpu(const MaskedGradArgs& args);

}  // namespace fakequant
