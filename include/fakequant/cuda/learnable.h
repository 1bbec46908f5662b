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

// Device workspace the backward needs for its partial sums (0 when no grad_scale /
// grad_zero_point is requested): two doubles per (block or slice, channel), a few KB to a
// few hundred KB, never proportional to numel beyond numel / 256 entries. Depends on the
// current device (its multiprocessor count), so call it with the device of the launch current.
size_t learnable_backward_workspace_bytes(const LearnableBackwardArgs& args, const LearnableQParams& qp);

// The backward: grad_input elementwise, grad_scale / grad_zero_point as per-block partial sums
// in double (CUB block reductions) combined by a second small kernel in a fixed order, so the
// result is deterministic on a given device. No atomics, no full-size temporaries.
// `workspace` holds at least learnable_backward_workspace_bytes(args, qp) bytes, 8-byte aligned.
cudaError_t launch_fake_quant_learnable_backward(const LearnableBackwardArgs& args, const LearnableQParams& qp,
                                                 void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace fakequant
