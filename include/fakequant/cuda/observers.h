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
// (args.channels floats each; out_b only for kMinMax). A dense layout is required:
// numel a multiple of channels * channel_stride (cudaErrorInvalidValue otherwise, before
// anything is launched); channels == 0 launches nothing.
size_t reduce_workspace_bytes(const ReduceArgs& args);
cudaError_t launch_reduce(const ReduceArgs& args, ReduceKind kind, float* out_a, float* out_b, void* workspace,
                          cudaStream_t stream);

// The first stage of a reduction (every channel's elements folded into partials) has one
// kernel per layout, so that every layout reads memory coalesced; the second stage is common.
//   kNone              no elements: the second stage starts from the identity;
//   kRuns              each channel one contiguous run (per tensor, or the channel outermost);
//                      blocks stride over the run, with 16-byte loads when vector_loads: per
//                      tensor whenever the input is 16-byte aligned (a scalar tail follows), per
//                      channel when every run starts 16-byte aligned;
//   kChannelInnermost  channel_stride 1 (channels_last along C, the last axis): the lanes of a
//                      warp take consecutive channels of a row (consecutive elements when there
//                      are fewer than 32 channels), the block's rows stride;
//   kStrided           the channel axis between others (outer > 1 and inner > 1): a block walks
//                      one channel's runs, its (outer index, position) advanced incrementally.
enum class ReduceStage1 : int32_t { kNone = 0, kRuns = 1, kChannelInnermost = 2, kStrided = 3 };

struct ReducePath {
  ReduceStage1 stage1 = ReduceStage1::kNone;
  bool vector_loads = false;
};

// The path launch_reduce (and the observers' reduction) takes for `args`: a host-side query,
// no device access.
ReducePath reduce_path(const ReduceArgs& args);

// Workspace of the fused observer + quant-dequant launchers: the reduction's partials and
// the per-channel quant-dequant step and zero point they derive.
size_t observer_workspace_bytes(const ReduceArgs& args);

// The observer launchers check their arguments (dtype, bits, rounding, window size,
// channels, quant range, layout) before they launch anything: a launch that returns an error
// has left the observer state untouched. Their quant-dequant has no seed, so
// Rounding::kStochastic is rejected (cudaErrorInvalidValue).

// Paddle moving_average_abs_max: in training, reduce |x|, update (state, accum, scale), then
// quant-dequant `fq` with step scale / bin_cnt in [-bin_cnt, bin_cnt]; in eval, quant-dequant
// with the stored scale only. bits in [2, 16].
cudaError_t launch_fake_quant_moving_average_abs_max(const FakeQuantArgs& fq, const MovingAverageAbsMaxState& s,
                                                     int32_t bits, Rounding rounding, bool training, void* workspace,
                                                     cudaStream_t stream);

// Paddle range_abs_max, as above with the window update; the window rescan runs on the
// device in the same launch as the update. A negative *iter (out of contract; only the device
// can see it) leaves window, iter and scale untouched and quant-dequantises with a NaN step:
// every output element NaN, every mask bit 0.
cudaError_t launch_fake_quant_range_abs_max(const FakeQuantArgs& fq, const RangeAbsMaxState& s, int32_t bits,
                                            Rounding rounding, bool training, void* workspace, cudaStream_t stream);

// PyTorch's fused moving-average min/max observer + quant-dequant. s.channels == 1 is
// per-tensor; otherwise per channel with the given channel_stride (memory order).
cudaError_t launch_fused_moving_average_min_max(const FakeQuantArgs& fq, const MovingAverageMinMaxState& s,
                                                int64_t channel_stride, Rounding rounding, void* workspace,
                                                cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
