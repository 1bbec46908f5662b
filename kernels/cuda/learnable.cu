// CUDA learnable-qparam (LSQ / LSQ+) quant-dequant and its backward.
//
// Forward: one thread per group of 8 consecutive elements (16-byte accesses when aligned), as
// the per-tensor / per-channel kernels; the zero point is rounded on the device.
//
// Backward: grad_input elementwise; grad_scale / grad_zero_point summed in double without
// atomics or full-size temporaries, then rounded once to float. The memory order of a dense
// tensor is [outer][channels][inner] with inner = the axis' stride, and the work is split so
// that each block's elements belong to known channels:
//   flat  (per-tensor, or one channel): groups of 8 with 16-byte loads, grid-stride; one
//         partial per block (cub::BlockReduce), then one block adds the partials in order.
//   runs  (per-channel, inner >= kRunsMinInner): block (c, j) walks slice j of channel c's
//         outer * inner elements; consecutive threads take consecutive elements of a run, so
//         loads coalesce; one partial per (slice, channel).
//   rows  (per-channel, inner < kRunsMinInner: channels_last along C, the last axis, NCHW
//         with small feature maps such as 7x7, ...): a row (one outer index) is
//         channels * inner contiguous elements. Block (tile, j) covers a tile of
//         tile_channels whole channels, i.e. tile_elements = tile_channels * inner <= 256
//         consecutive elements of every row, one element per thread, for the rows of slice j;
//         when a whole row is shorter than the block, `lanes` rows are read side by side
//         (thread t: lane t / tile_elements, element t % tile_elements). Consecutive threads
//         touch consecutive elements (a warp reads 32 of them: 128 bytes in fp32), and every
//         element of a thread belongs to the same channel. The threads' sums are combined in
//         shared memory by a fixed pairwise tree, first across lanes, then across the inner
//         positions of each channel, which gives one partial per (slice, channel).
// A second small kernel adds each channel's partials in slice order. Every sum is in a fixed
// order for a given device, so results are reproducible run to run.
#include <cub/cub.cuh>

#include <algorithm>
#include <cstdint>

#include "fakequant/cuda/learnable.h"
#include "fakequant/dispatch.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kRunsMinInner = 64;     // runs at least this long use the "runs" split
constexpr int64_t kBlocksPerSm = 16;      // target blocks for the per-channel splits
constexpr int64_t kMinRunsSlice = 2048;   // elements per block in the "runs" split, at least
constexpr int64_t kElementsPerPartial = 256;  // partial entries stay <= numel / 256 (+ one row)
constexpr int kUnroll = 4;

struct ChannelParams {
  float scale, inv, zero_point;
  bool valid;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float poison_value() { return __uint_as_float(0x7FC00000u); }

__device__ __forceinline__ ChannelParams forward_params(const float* scales, const float* zero_points, int64_t c,
                                                        float qmin, float qmax) {
  const float s = scales[c];
  const float z = zero_points[c];
  const bool valid = learnable_qparams_valid(s, z);
  return {s, inverse_scale(s), valid ? learnable_zero_point_forward(z, qmin, qmax) : 0.0f, valid};
}

__device__ __forceinline__ ChannelParams backward_params(const float* scales, const float* zero_points, int64_t c,
                                                         bool per_tensor_rule, float qmin, float qmax) {
  const float s = scales[c];
  const float z = zero_points[c];
  const bool valid = learnable_qparams_valid(s, z);
  const float zb = per_tensor_rule ? learnable_zero_point_backward_per_tensor(z, qmin, qmax)
                                   : learnable_zero_point_backward_per_channel(z, qmin, qmax);
  return {s, inverse_scale(s), valid ? zb : 0.0f, valid};
}

struct Sums {
  double scale, zero_point;
};

struct SumsAdd {
  __device__ __forceinline__ Sums operator()(const Sums& a, const Sums& b) const {
    return {a.scale + b.scale, a.zero_point + b.zero_point};
  }
};

// One element of the backward: returns grad_input, adds the qparam terms to `acc`.
template <bool kReduce>
__device__ __forceinline__ float backward_element(float x, float dy, const ChannelParams& p, float qmin, float qmax,
                                                  float grad_factor, Sums& acc) {
  const LearnableGrad g = learnable_grad(x, dy, p.scale, p.inv, p.zero_point, qmin, qmax, grad_factor);
  if constexpr (kReduce) {
    acc.scale += static_cast<double>(p.valid ? g.grad_scale : poison_value());
    acc.zero_point += static_cast<double>(p.valid ? g.grad_zero_point : poison_value());
  }
  return p.valid ? g.grad_input : poison_value();
}

// kUnroll elements at `offset` (those with `has` set) of one channel: every load is issued
// before the first element is used, then each element's gradients as backward_element.
template <typename T, bool kGradInput, bool kReduce>
__device__ __forceinline__ void backward_batch(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                               const int64_t (&offset)[kUnroll], const bool (&has)[kUnroll],
                                               const ChannelParams& p, float qmin, float qmax, float grad_factor,
                                               Sums& acc) {
  float xv[kUnroll], dv[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    xv[u] = has[u] ? to_float(x[offset[u]]) : 0.0f;
    dv[u] = has[u] ? to_float(dy[offset[u]]) : 0.0f;
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (!has[u]) continue;
    const float r = backward_element<kReduce>(xv[u], dv[u], p, qmin, qmax, grad_factor, acc);
    if constexpr (kGradInput) dx[offset[u]] = from_float<T>(r);
  }
}

// ---------------------------------------------------------------------------
// Forward

template <typename T, bool kPerChannel, bool kVector>
__global__ void learnable_forward_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t numel,
                                         const float* __restrict__ scales, const float* __restrict__ zero_points,
                                         int64_t channels, int64_t channel_stride, int32_t quant_min,
                                         int32_t quant_max) {
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  ChannelParams p{};
  if constexpr (!kPerChannel) p = forward_params(scales, zero_points, 0, qmin, qmax);
  for_each_group(numel, [&](int64_t, int64_t base, bool full) {
    int64_t within = 0, c = 0;
    if constexpr (kPerChannel) {
      const int64_t run = base / channel_stride;
      within = base - run * channel_stride;
      c = run % channels;
      p = forward_params(scales, zero_points, c, qmin, qmax);
    }
    const Group<T> x = load_group_padded<T, kVector>(in, base, full, numel);
    Group<T> y;
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) {
      if constexpr (kPerChannel) {
        if (j > 0 && ++within == channel_stride) {
          within = 0;
          if (++c == channels) c = 0;
          p = forward_params(scales, zero_points, c, qmin, qmax);
        }
      }
      const QuantDequantResult r =
          quant_dequant(to_float(x.v[j]), p.scale, p.inv, p.zero_point, qmin, qmax, Rounding::kHalfEven);
      y.v[j] = from_float<T>(p.valid ? r.value : poison_value());
    }
    store_group_padded<T, kVector>(out, y, base, full, numel);
  });
}

template <typename T>
cudaError_t launch_forward_typed(const LearnableForwardArgs& a, const LearnableQParams& qp, cudaStream_t stream) {
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.output);
  const bool vec = is_aligned16(in) && is_aligned16(out);
  const bool per_channel = qp.channels > 1;
  const LaunchShape shape = grid_for(mask_bytes(a.numel));
  auto go = [&](auto kernel) {
    kernel<<<shape.blocks, shape.threads, 0, stream>>>(in, out, a.numel, qp.scale, qp.zero_point, qp.channels,
                                                       qp.channel_stride, qp.quant_min, qp.quant_max);
  };
  if (per_channel) {
    vec ? go(learnable_forward_kernel<T, true, true>) : go(learnable_forward_kernel<T, true, false>);
  } else {
    vec ? go(learnable_forward_kernel<T, false, true>) : go(learnable_forward_kernel<T, false, false>);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------
// Backward: flat (one channel)

template <typename T, bool kVector, bool kGradInput, bool kReduce>
__global__ void __launch_bounds__(kThreads)
    learnable_backward_flat_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                   int64_t numel, const float* __restrict__ scale, const float* __restrict__ zero_point,
                                   bool per_tensor_rule, int32_t quant_min, int32_t quant_max, float grad_factor,
                                   double* __restrict__ partial_scale, double* __restrict__ partial_zero_point) {
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const ChannelParams p = backward_params(scale, zero_point, 0, per_tensor_rule, qmin, qmax);
  Sums acc{0.0, 0.0};
  for_each_group(numel, [&](int64_t, int64_t base, bool full) {
    if (full) {
      const Group<T> xv = load_group<T, kVector>(x + base);
      const Group<T> dv = load_group<T, kVector>(dy + base);
      Group<T> out;
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        out.v[j] = from_float<T>(
            backward_element<kReduce>(to_float(xv.v[j]), to_float(dv.v[j]), p, qmin, qmax, grad_factor, acc));
      }
      if constexpr (kGradInput) store_group<T, kVector>(dx + base, out);
    } else {
      for (int j = 0; base + j < numel; ++j) {
        const float r =
            backward_element<kReduce>(to_float(x[base + j]), to_float(dy[base + j]), p, qmin, qmax, grad_factor, acc);
        if constexpr (kGradInput) dx[base + j] = from_float<T>(r);
      }
    }
  });
  if constexpr (kReduce) {
    using BlockReduce = cub::BlockReduce<Sums, kThreads>;
    __shared__ typename BlockReduce::TempStorage temp;
    const Sums total = BlockReduce(temp).Reduce(acc, SumsAdd());
    if (threadIdx.x == 0) {
      partial_scale[blockIdx.x] = total.scale;
      partial_zero_point[blockIdx.x] = total.zero_point;
    }
  }
}

// One block: thread t adds partials t, t + 256, ... in order, then a block reduction.
__global__ void __launch_bounds__(kThreads)
    learnable_finish_flat_kernel(const double* __restrict__ partial_scale,
                                 const double* __restrict__ partial_zero_point, int64_t partials,
                                 float* __restrict__ grad_scale, float* __restrict__ grad_zero_point) {
  Sums acc{0.0, 0.0};
  for (int64_t i = threadIdx.x; i < partials; i += blockDim.x) {
    acc.scale += partial_scale[i];
    acc.zero_point += partial_zero_point[i];
  }
  using BlockReduce = cub::BlockReduce<Sums, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const Sums total = BlockReduce(temp).Reduce(acc, SumsAdd());
  if (threadIdx.x == 0) {
    if (grad_scale != nullptr) *grad_scale = static_cast<float>(total.scale);
    if (grad_zero_point != nullptr) *grad_zero_point = static_cast<float>(total.zero_point);
  }
}

// ---------------------------------------------------------------------------
// Backward: per-channel, long runs

template <typename T, bool kGradInput, bool kReduce>
__global__ void __launch_bounds__(kThreads)
    learnable_backward_runs_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                   int64_t channels, int64_t inner, int64_t per_channel, int64_t slices,
                                   const float* __restrict__ scales, const float* __restrict__ zero_points,
                                   int32_t quant_min, int32_t quant_max, float grad_factor,
                                   double* __restrict__ partial_scale, double* __restrict__ partial_zero_point) {
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const int64_t c = blockIdx.x / slices;
  const int64_t j = blockIdx.x - c * slices;
  const int64_t slice = (per_channel + slices - 1) / slices;
  const int64_t k1 = min64(per_channel, (j + 1) * slice);
  const ChannelParams p = backward_params(scales, zero_points, c, false, qmin, qmax);
  const int64_t row = channels * inner;  // elements per outer index
  const int64_t channel_base = c * inner;
  // Element k of the channel is (outer o, position i) = (k / inner, k % inner); each step
  // advances k by blockDim.x, i.e. o by step_o and i by step_i (with one carry).
  const int64_t step_o = blockDim.x / inner;
  const int64_t step_i = blockDim.x - step_o * inner;
  int64_t k = j * slice + threadIdx.x;
  int64_t o = k / inner;
  int64_t i = k - o * inner;
  Sums acc{0.0, 0.0};
  while (k < k1) {
    int64_t offset[kUnroll];
    bool has[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      has[u] = k < k1;
      offset[u] = o * row + channel_base + i;
      k += blockDim.x;
      o += step_o;
      i += step_i;
      if (i >= inner) i -= inner, ++o;
    }
    backward_batch<T, kGradInput, kReduce>(x, dy, dx, offset, has, p, qmin, qmax, grad_factor, acc);
  }
  if constexpr (kReduce) {
    using BlockReduce = cub::BlockReduce<Sums, kThreads>;
    __shared__ typename BlockReduce::TempStorage temp;
    const Sums total = BlockReduce(temp).Reduce(acc, SumsAdd());
    if (threadIdx.x == 0) {
      partial_scale[j * channels + c] = total.scale;
      partial_zero_point[j * channels + c] = total.zero_point;
    }
  }
}

// ---------------------------------------------------------------------------
// Backward: per-channel, short runs

// Block (tile, j): thread t takes element `position` = t % tile_elements of the tile in the
// rows j * rows + lane, + lanes, ... (lane = t / tile_elements) of slice j; the tile starts
// at element tile * tile_elements of each row, so the warps of a block read consecutive
// elements. kUnroll rows are loaded before any is used, to keep loads in flight.
template <typename T, bool kGradInput, bool kReduce>
__global__ void __launch_bounds__(kThreads)
    learnable_backward_rows_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                   int64_t channels, int64_t inner, int64_t outer, int64_t slices,
                                   int32_t tile_channels, int32_t lanes, const float* __restrict__ scales,
                                   const float* __restrict__ zero_points, int32_t quant_min, int32_t quant_max,
                                   float grad_factor, double* __restrict__ partial_scale,
                                   double* __restrict__ partial_zero_point) {
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const int64_t tile = blockIdx.x / slices;
  const int64_t j = blockIdx.x - tile * slices;
  const int tile_elements = tile_channels * static_cast<int>(inner);  // <= kThreads
  const int t = threadIdx.x;
  const int lane = t / tile_elements;
  const int position = t - lane * tile_elements;
  const int64_t c = tile * tile_channels + position / inner;
  const bool active = lane < lanes && c < channels;
  const int64_t row = channels * inner;
  const int64_t rows = (outer + slices - 1) / slices;
  const int64_t o1 = min64(outer, (j + 1) * rows);
  Sums acc{0.0, 0.0};
  if (active) {
    const ChannelParams p = backward_params(scales, zero_points, c, false, qmin, qmax);
    const int64_t column = tile * tile_elements + position;
    for (int64_t o = j * rows + lane; o < o1; o += static_cast<int64_t>(lanes) * kUnroll) {
      int64_t offset[kUnroll];
      bool has[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t ou = o + static_cast<int64_t>(u) * lanes;
        has[u] = ou < o1;
        offset[u] = ou * row + column;
      }
      backward_batch<T, kGradInput, kReduce>(x, dy, dx, offset, has, p, qmin, qmax, grad_factor, acc);
    }
  }
  if constexpr (kReduce) {
    // Slot t holds thread t's sums (0 for idle threads). Fixed pairwise trees: slot
    // (lane, position) += slot (lane + w, position) for lane % 2w == 0; then within each
    // channel's inner positions i: slot i += slot i + w for i % 2w == 0. A step reads only
    // slots no thread writes in that step; the channel's total ends in its first slot.
    __shared__ double slot_scale[kThreads];
    __shared__ double slot_zero_point[kThreads];
    slot_scale[t] = acc.scale;
    slot_zero_point[t] = acc.zero_point;
    __syncthreads();
    for (int w = 1; w < lanes; w *= 2) {
      if (lane % (2 * w) == 0 && lane + w < lanes) {
        slot_scale[t] += slot_scale[t + w * tile_elements];
        slot_zero_point[t] += slot_zero_point[t + w * tile_elements];
      }
      __syncthreads();
    }
    const int i = position % static_cast<int>(inner);
    for (int w = 1; w < inner; w *= 2) {
      if (lane == 0 && i % (2 * w) == 0 && i + w < inner) {
        slot_scale[t] += slot_scale[t + w];
        slot_zero_point[t] += slot_zero_point[t + w];
      }
      __syncthreads();
    }
    if (lane == 0 && i == 0 && c < channels) {
      partial_scale[j * channels + c] = slot_scale[t];
      partial_zero_point[j * channels + c] = slot_zero_point[t];
    }
  }
}

// Thread per channel: adds its `slices` partials in slice order.
__global__ void learnable_finish_channels_kernel(const double* __restrict__ partial_scale,
                                                 const double* __restrict__ partial_zero_point, int64_t slices,
                                                 int64_t channels, float* __restrict__ grad_scale,
                                                 float* __restrict__ grad_zero_point) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += stride) {
    double s = 0.0, z = 0.0;
    for (int64_t j = 0; j < slices; ++j) {
      s += partial_scale[j * channels + c];
      z += partial_zero_point[j * channels + c];
    }
    if (grad_scale != nullptr) grad_scale[c] = static_cast<float>(s);
    if (grad_zero_point != nullptr) grad_zero_point[c] = static_cast<float>(z);
  }
}

// ---------------------------------------------------------------------------
// Backward plan and launch

using Split = LearnableBackwardSplit;
using BackwardPlan = LearnableBackwardShape;

// Whether the launch accepts the arguments (the plan is empty otherwise): positive channels and
// channel_stride, and per-channel a whole number of [channels][inner] rows.
bool backward_args_valid(const LearnableBackwardArgs& a, const LearnableQParams& qp) {
  if (a.numel < 0 || qp.channels <= 0 || qp.channel_stride <= 0) return false;
  if (qp.channels == 1) return true;
  return qp.channel_stride <= a.numel / qp.channels && a.numel % (qp.channels * qp.channel_stride) == 0;
}

BackwardPlan plan_backward(const LearnableBackwardArgs& a, const LearnableQParams& qp) {
  BackwardPlan plan;
  const bool reduce = a.grad_scale != nullptr || a.grad_zero_point != nullptr;
  if (a.numel <= 0 || !backward_args_valid(a, qp)) return plan;
  if (qp.channels == 1) {
    plan.split = Split::kFlat;
    plan.inner = a.numel;
    plan.blocks = grid_for(mask_bytes(a.numel), kThreads).blocks;
    plan.partials = reduce ? plan.blocks : 0;
    return plan;
  }
  plan.channels = qp.channels;
  plan.inner = qp.channel_stride;
  plan.outer = a.numel / (qp.channels * qp.channel_stride);
  const int64_t target = static_cast<int64_t>(current_sm_count()) * kBlocksPerSm;
  const int64_t max_slices = std::max<int64_t>(1, a.numel / (kElementsPerPartial * plan.channels));
  if (plan.inner >= kRunsMinInner) {
    plan.split = Split::kRuns;
    const int64_t per_channel = plan.outer * plan.inner;
    const int64_t by_size = std::max<int64_t>(1, per_channel / kMinRunsSlice);
    plan.slices = std::clamp<int64_t>((target + plan.channels - 1) / plan.channels, 1, std::min(by_size, max_slices));
    plan.blocks = plan.channels * plan.slices;
  } else {
    plan.split = Split::kRows;
    // As many whole channels as fit the block (at least 4, as inner < 64), then as many whole
    // rows side by side as fit.
    plan.tile_channels = std::min<int64_t>(plan.channels, kThreads / plan.inner);
    plan.tile_elements = plan.tile_channels * plan.inner;
    plan.lanes = kThreads / plan.tile_elements;
    const int64_t tiles = (plan.channels + plan.tile_channels - 1) / plan.tile_channels;
    plan.slices = std::clamp<int64_t>((target + tiles - 1) / tiles, 1, std::min(plan.outer, max_slices));
    plan.blocks = tiles * plan.slices;
  }
  plan.partials = reduce ? plan.slices * plan.channels : 0;
  return plan;
}

template <typename T, bool kGradInput, bool kReduce>
void launch_backward_kernels(const LearnableBackwardArgs& a, const LearnableQParams& qp, const BackwardPlan& plan,
                             double* ps, double* pz, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.input);
  const T* dy = static_cast<const T*>(a.grad_output);
  T* dx = static_cast<T*>(a.grad_input);
  const unsigned int blocks = static_cast<unsigned int>(plan.blocks);
  switch (plan.split) {
    case Split::kNone:
      return;
    case Split::kFlat: {
      const bool per_tensor_rule = qp.kind == LearnableKind::kPerTensor;
      const bool vec = is_aligned16(x) && is_aligned16(dy) && (!kGradInput || is_aligned16(dx));
      auto go = [&](auto kernel) {
        kernel<<<blocks, kThreads, 0, stream>>>(x, dy, dx, a.numel, qp.scale, qp.zero_point, per_tensor_rule,
                                                qp.quant_min, qp.quant_max, qp.grad_factor, ps, pz);
      };
      vec ? go(learnable_backward_flat_kernel<T, true, kGradInput, kReduce>)
          : go(learnable_backward_flat_kernel<T, false, kGradInput, kReduce>);
      if constexpr (kReduce) {
        learnable_finish_flat_kernel<<<1, kThreads, 0, stream>>>(ps, pz, plan.blocks, a.grad_scale, a.grad_zero_point);
      }
      return;
    }
    case Split::kRuns:
      learnable_backward_runs_kernel<T, kGradInput, kReduce><<<blocks, kThreads, 0, stream>>>(
          x, dy, dx, plan.channels, plan.inner, plan.outer * plan.inner, plan.slices, qp.scale, qp.zero_point,
          qp.quant_min, qp.quant_max, qp.grad_factor, ps, pz);
      break;
    case Split::kRows:
      learnable_backward_rows_kernel<T, kGradInput, kReduce><<<blocks, kThreads, 0, stream>>>(
          x, dy, dx, plan.channels, plan.inner, plan.outer, plan.slices, static_cast<int32_t>(plan.tile_channels),
          static_cast<int32_t>(plan.lanes), qp.scale, qp.zero_point, qp.quant_min, qp.quant_max, qp.grad_factor, ps,
          pz);
      break;
  }
  if constexpr (kReduce) {
    const LaunchShape finish = grid_for(plan.channels, kThreads);
    learnable_finish_channels_kernel<<<finish.blocks, finish.threads, 0, stream>>>(
        ps, pz, plan.slices, plan.channels, a.grad_scale, a.grad_zero_point);
  }
}

template <typename T>
void launch_backward_typed(const LearnableBackwardArgs& a, const LearnableQParams& qp, const BackwardPlan& plan,
                           double* ps, double* pz, cudaStream_t stream) {
  const bool grad_input = a.grad_input != nullptr;
  const bool reduce = plan.partials > 0;
  if (grad_input && reduce) {
    launch_backward_kernels<T, true, true>(a, qp, plan, ps, pz, stream);
  } else if (grad_input) {
    launch_backward_kernels<T, true, false>(a, qp, plan, ps, pz, stream);
  } else if (reduce) {
    launch_backward_kernels<T, false, true>(a, qp, plan, ps, pz, stream);
  }
}

}  // namespace

cudaError_t launch_fake_quant_learnable(const LearnableForwardArgs& a, const LearnableQParams& qp,
                                        cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  if (a.numel < 0 || qp.channels <= 0 || qp.channel_stride <= 0) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, cudaErrorInvalidValue,
                        [&](auto t) { return launch_forward_typed<typename decltype(t)::type>(a, qp, stream); });
}

LearnableBackwardShape learnable_backward_shape(const LearnableBackwardArgs& a, const LearnableQParams& qp) {
  return plan_backward(a, qp);
}

size_t learnable_backward_workspace_bytes(const LearnableBackwardArgs& a, const LearnableQParams& qp) {
  return static_cast<size_t>(2 * plan_backward(a, qp).partials) * sizeof(double);
}

cudaError_t launch_fake_quant_learnable_backward(const LearnableBackwardArgs& a, const LearnableQParams& qp,
                                                 void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int64_t channels = qp.channels;
  if (a.numel == 0) {
    // Nothing to sum: the qparam gradients are 0.
    if (a.grad_scale != nullptr && channels > 0) {
      const cudaError_t e = cudaMemsetAsync(a.grad_scale, 0, channels * sizeof(float), stream);
      if (e != cudaSuccess) return e;
    }
    if (a.grad_zero_point != nullptr && channels > 0) {
      return cudaMemsetAsync(a.grad_zero_point, 0, channels * sizeof(float), stream);
    }
    return cudaSuccess;
  }
  if (!backward_args_valid(a, qp)) return cudaErrorInvalidValue;
  const BackwardPlan plan = plan_backward(a, qp);
  if (static_cast<size_t>(2 * plan.partials) * sizeof(double) > workspace_bytes) return cudaErrorInvalidValue;
  if (plan.blocks > 0x7FFFFFFF) return cudaErrorInvalidConfiguration;
  double* ps = static_cast<double*>(workspace);
  double* pz = plan.partials > 0 ? ps + plan.partials : nullptr;
  dispatch_dtype(a.dtype,
                 [&](auto t) { launch_backward_typed<typename decltype(t)::type>(a, qp, plan, ps, pz, stream); });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fakequant
