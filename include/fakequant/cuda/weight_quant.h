// CUDA launcher of weight fake quantization with per-channel abs-max scales
// (fakequant/weight_quant.h). Launches on the given stream, never synchronises, returns the
// launch status. Pointers are device pointers; the caller has made the right device current.
#pragma once

#include <cuda_runtime_api.h>

#include "fakequant/weight_quant.h"

namespace fakequant {
namespace cuda {

// Largest tile of one block of channels staged in shared memory by the one-pass kernel
// (below the 48 KB a block may use without opting in, leaving room for the reduction's own
// shared memory).
constexpr int64_t kWeightTileBytes = 48 * 1024 - 512;

// True when launch_fake_quant_weight_abs_max takes the one-pass path: each channel
// contiguous in memory and a block of weight_channels_per_block(L) channels (whole mask
// bytes) fits in kWeightTileBytes. One kernel then reads the weight once, from global memory
// into shared memory, and writes scale, output and mask.
// Otherwise two passes run: a per-channel abs-max reduction (any layout) into `scale`, then
// the per-channel quant-dequant kernel, which needs `zero_points` (channels int32 zeros on
// the device; unused, may be null, on the one-pass path).
bool weight_abs_max_one_pass(const WeightAbsMaxArgs& args);

// Returns cudaErrorInvalidValue, having written nothing, for a rounding other than
// Rounding::kHalfEven or Rounding::kHalfAway (WeightAbsMaxArgs has no seed for
// Rounding::kStochastic), for numel < 0, for channel_stride <= 0 with several channels and
// data, and for null zero_points on the two-pass path. channels <= 0 is a no-op.
cudaError_t launch_fake_quant_weight_abs_max(const WeightAbsMaxArgs& args, const int32_t* zero_points,
                                             cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
