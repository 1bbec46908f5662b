// CUDA backend of the reduction and fused-observer ops (the op bodies: observers.h): workspace
// from the caching allocator, launch on the current stream. Observer state is read and updated
// on the device only (no host synchronisation; CUDA-graph capturable).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../observers.h"
#include "fakequant/cuda/observers.h"

namespace fakequant {
namespace ext {
namespace {

at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void reduce(ReduceCall& call, ReduceKind kind) {
  at::Tensor ws = workspace(call.input, cuda::reduce_workspace_bytes(call.args));
  C10_CUDA_CHECK(cuda::launch_reduce(call.args, kind, call.out_a.mutable_data_ptr<float>(),
                                     kind == ReduceKind::kMinMax ? call.out_b.mutable_data_ptr<float>() : nullptr,
                                     ws.mutable_data_ptr(), current_stream()));
}

ReduceArgs whole(const FakeQuantArgs& a) { return ReduceArgs{a.dtype, a.input, a.numel}; }

void moving_average_abs_max(MovingAverageAbsMaxCall& call, bool training) {
  at::Tensor ws = workspace(call.input, cuda::observer_workspace_bytes(whole(call.args)));
  C10_CUDA_CHECK(cuda::launch_fake_quant_moving_average_abs_max(call.args, call.state, call.bits, call.rounding,
                                                                training, ws.mutable_data_ptr(), current_stream()));
}

void range_abs_max(RangeAbsMaxCall& call, bool training) {
  at::Tensor ws = workspace(call.input, cuda::observer_workspace_bytes(whole(call.args)));
  C10_CUDA_CHECK(cuda::launch_fake_quant_range_abs_max(call.args, call.state, call.bits, call.rounding, training,
                                                       ws.mutable_data_ptr(), current_stream()));
}

void moving_average_min_max(MovingAverageMinMaxCall& call, bool) {
  ReduceArgs r = whole(call.args);
  r.channels = call.state.channels;
  r.channel_stride = call.channel_stride;
  at::Tensor ws = workspace(call.input, cuda::observer_workspace_bytes(r));
  C10_CUDA_CHECK(cuda::launch_fused_moving_average_min_max(call.args, call.state, call.channel_stride, call.rounding,
                                                           ws.mutable_data_ptr(), current_stream()));
}

constexpr ObserverBackend kCuda{/*host_values=*/false, &reduce, &moving_average_abs_max, &range_abs_max,
                                &moving_average_min_max};

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) { ObserverOps<kCuda>::register_all(m); }

}  // namespace ext
}  // namespace fakequant
