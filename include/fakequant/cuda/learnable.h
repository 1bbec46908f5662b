// CUDA launchers of the learnable-qparam (LSQ / LSQ+) ops. Each launches on the given stream,
// never synchronises, and returns the launch status. Pointers are device pointers; the caller
// has made the right device current. Qparams are read on the device: out-of-contract values
// (learnable_qparams_valid) poison what they govern with NaN instead of raising.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "fakequant/learnable.h"

namespace fakequant {
namespace cuda {

cudaError_t launch_fake_quant_learnable(const LearnableForwardArgs& args, const LearnableQParams& qp,
                                        cudaStream_t stream);

// How launch_fake_quant_learnable_backward divides the work for these arguments on the current
// device: the grid it launches and the partial sums it keeps (what
// learnable_backward_workspace_bytes sizes). The memory order is viewed as
// [outer][channels][inner] with inner = qp.channel_stride.
enum class LearnableBackwardSplit : int32_t {
  kNone = 0,  // nothing to launch: an empty input, or arguments the launch rejects
  kFlat = 1,  // one channel (per-tensor): 8 consecutive elements per thread, grid-stride
  kRuns = 2,  // per-channel, inner >= 64: a block walks a slice of one channel's runs
  kRows = 3,  // per-channel, inner < 64: a block covers whole channels of every row of a slice
};

struct LearnableBackwardShape {
  LearnableBackwardSplit split = LearnableBackwardSplit::kNone;
  int64_t blocks = 0;  // blocks of the main kernel (256 threads each)
  int64_t slices = 1;  // per-channel: partial sums per channel, added in slice order
  int64_t channels = 1, inner = 1, outer = 1;  // the view (flat: [1][1][numel])
  // Rows split: a block covers tile_channels whole channels, i.e. tile_elements =
  // tile_channels * inner <= 256 consecutive elements of a row, one per thread, in `lanes`
  // rows side by side (lanes > 1 only when a whole row fits the block). Consecutive threads
  // take consecutive elements. 0 for the other splits.
  int64_t tile_channels = 0, tile_elements = 0, lanes = 0;
  int64_t partials = 0;  // doubles in each of the two partial-sum arrays (0: no reduction)
};

LearnableBackwardShape learnable_backward_shape(const LearnableBackwardArgs& args, const LearnableQParams& qp);

// Device workspace the backward needs for its partial sums (0 when no grad_scale /
// grad_zero_point is requested): two doubles per (block or slice, channel), a few KB to a
// few hundred KB, never proportional to numel beyond numel / 256 entries. Depends on the
// current device (its multiprocessor count), so call it with the device of the launch current.
size_t learnable_backward_workspace_bytes(const LearnableBackwardArgs& args, const LearnableQParams& qp);

// The backward: grad_input elementwise, grad_scale / grad_zero_point as per-block partial sums
// in double (CUB block reductions, or fixed pairwise trees in shared memory for the rows
// split) combined by a second small kernel in a fixed order, so the result is deterministic
// on a given device. No atomics, no full-size temporaries.
// `workspace` holds at least learnable_backward_workspace_bytes(args, qp) bytes, 8-byte aligned.
// Per-channel (qp.channels > 1), numel must be a multiple of channels * channel_stride (a
// dense tensor); otherwise, or with channels or channel_stride < 1, or too small a workspace,
// nothing is launched and cudaErrorInvalidValue is returned.
cudaError_t launch_fake_quant_learnable_backward(const LearnableBackwardArgs& args, const LearnableQParams& qp,
                                                 void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
