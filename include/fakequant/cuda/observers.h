// CUDA launchers of the reductions and fused observers (<fakequant/observers.h>). Each
// launches on the given stream, never synchronises, and returns the launch status. The
// caller provides device workspace of the size the matching *_workspace_bytes() names.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "fakequant/observers.h"

namespace fakequant {
namespace cuda {

// Per-tensor (args.channels == 1) or per-channel abs-max / min-max into out_a / out_b
// (args.channels floats each; out_b only for kMinMax).
size_t reduce_workspace_bytes(const ReduceArgs& args);
cudaError_t launch_reduce(const ReduceArgs& args, ReduceKind kind, float* out_a, float* out_b, void* workspace,
                          cudaStream_t stream);

// Workspace of the fused observer + quant-dequant launchers: the reduction's partials and
// the per-channel quant-dequant step and zero point they derive.
size_t observer_workspace_bytes(const ReduceArgs& args);

// Paddle moving_average_abs_max: in training, reduce |x|, update (state, accum, scale), then
// quant-dequant `fq` with step scale / bin_cnt in [-bin_cnt, bin_cnt]; in eval, quant-dequant
// with the stored scale only. bits in [2, 16].
cudaError_t launch_fake_quant_moving_average_abs_max(const FakeQuantArgs& fq, const MovingAverageAbsMaxState& s,
                                                     int32_t bits, Rounding rounding, bool training, void* workspace,
                                                     cudaStream_t stream);

// Paddle range_abs_max, as above with the window update; the window rescan runs on the
// device in the same launch as the update.
cudaError_t launch_fake_quant_range_abs_max(const FakeQuantArgs& fq, const RangeAbsMaxState& s, int32_t bits,
                                            Rounding rounding, bool training, void* workspace, cudaStream_t stream);

// PyTorch's fused moving-average min/max observer + quant-dequant. s.channels == 1 is
// per-tensor; otherwise per channel with the given channel_stride (memory order).
cudaError_t launch_fused_moving_average_min_max(const FakeQuantArgs& fq, const MovingAverageMinMaxState& s,
                                                int64_t channel_stride, Rounding rounding, void* workspace,
                                                cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
