// CUDA kernels of the reduction and fused-observer ops: checks, device guard, workspace from
// the caching allocator, launch on the current stream. Observer state is read and updated on
// the device only (no host synchronisation; CUDA-graph capturable).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../observers.h"
#include "fakequant/cuda/observers.h"

namespace fakequant {
namespace ext {
namespace {

at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor abs_max_cuda_op(const at::Tensor& input, c10::optional<int64_t> axis) {
  ReduceCall call = prepare_reduce("fakequant.abs_max", input, axis, ReduceKind::kAbsMax);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor ws = workspace(call.input, cuda::reduce_workspace_bytes(call.args));
  C10_CUDA_CHECK(cuda::launch_reduce(call.args, ReduceKind::kAbsMax, call.out_a.mutable_data_ptr<float>(), nullptr,
                                     ws.mutable_data_ptr(), current_stream()));
  return call.out_a;
}

std::tuple<at::Tensor, at::Tensor> min_max_cuda_op(const at::Tensor& input, c10::optional<int64_t> axis) {
  ReduceCall call = prepare_reduce("fakequant.min_max", input, axis, ReduceKind::kMinMax);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor ws = workspace(call.input, cuda::reduce_workspace_bytes(call.args));
  C10_CUDA_CHECK(cuda::launch_reduce(call.args, ReduceKind::kMinMax, call.out_a.mutable_data_ptr<float>(),
                                     call.out_b.mutable_data_ptr<float>(), ws.mutable_data_ptr(), current_stream()));
  return {call.out_a, call.out_b};
}

ReduceArgs whole(const FakeQuantArgs& a) { return ReduceArgs{a.dtype, a.input, a.numel}; }

std::tuple<at::Tensor, at::Tensor> moving_average_abs_max_cuda_op(const at::Tensor& input, at::Tensor& scale,
                                                                   at::Tensor& state, at::Tensor& accum,
                                                                   double moving_rate, int64_t bits, bool training,
                                                                   c10::string_view rounding) {
  MovingAverageAbsMaxCall call =
      prepare_moving_average_abs_max(input, scale, state, accum, moving_rate, bits, rounding);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor ws = workspace(call.input, cuda::observer_workspace_bytes(whole(call.args)));
  C10_CUDA_CHECK(cuda::launch_fake_quant_moving_average_abs_max(call.args, call.state, call.bits, call.rounding,
                                                                training, ws.mutable_data_ptr(), current_stream()));
  return {call.output, call.mask};
}

std::tuple<at::Tensor, at::Tensor> range_abs_max_cuda_op(const at::Tensor& input, at::Tensor& scale,
                                                         at::Tensor& window, at::Tensor& iter, int64_t bits,
                                                         bool training, c10::string_view rounding) {
  RangeAbsMaxCall call = prepare_range_abs_max(input, scale, window, iter, bits, rounding);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor ws = workspace(call.input, cuda::observer_workspace_bytes(whole(call.args)));
  C10_CUDA_CHECK(cuda::launch_fake_quant_range_abs_max(call.args, call.state, call.bits, call.rounding, training,
                                                       ws.mutable_data_ptr(), current_stream()));
  return {call.output, call.mask};
}

std::tuple<at::Tensor, at::Tensor> fused_moving_avg_obs_fake_quant_cuda_op(
    const at::Tensor& input, const at::Tensor& observer_on, const at::Tensor& fake_quant_on, at::Tensor& running_min,
    at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point, double averaging_const, int64_t quant_min,
    int64_t quant_max, c10::optional<int64_t> axis, bool symmetric, bool reduce_range, c10::string_view rounding) {
  MovingAverageMinMaxCall call =
      prepare_moving_average_min_max(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                                     averaging_const, quant_min, quant_max, axis, symmetric, reduce_range, rounding);
  if (call.state.channels == 0) return {call.output, call.mask};  // empty along the axis: nothing to do
  const c10::cuda::CUDAGuard guard(input.device());
  ReduceArgs r = whole(call.args);
  r.channels = call.state.channels;
  r.channel_stride = call.channel_stride;
  at::Tensor ws = workspace(call.input, cuda::observer_workspace_bytes(r));
  C10_CUDA_CHECK(cuda::launch_fused_moving_average_min_max(call.args, call.state, call.channel_stride, call.rounding,
                                                           ws.mutable_data_ptr(), current_stream()));
  return {call.output, call.mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, CUDA, m) {
  m.impl("abs_max", &abs_max_cuda_op);
  m.impl("min_max", &min_max_cuda_op);
  m.impl("fake_quant_moving_average_abs_max", &moving_average_abs_max_cuda_op);
  m.impl("fake_quant_range_abs_max", &range_abs_max_cuda_op);
  m.impl("fused_moving_avg_obs_fake_quant", &fused_moving_avg_obs_fake_quant_cuda_op);
}

}  // namespace ext
}  // namespace fakequant
