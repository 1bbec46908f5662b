// Two-stage per-channel (or per-tensor) reductions with an epilogue, on the current stream,
// without host synchronisation:
//
//   stage 1  one partial per (split, channel), from one of three kernels chosen by the layout
//            (ReduceStage1 in fakequant/cuda/observers.h), so that loads stay coalesced:
//              runs              grid (splits, channels): a block folds a strided share of one
//                                channel's contiguous run (16-byte loads when aligned);
//              channel innermost grid (splits, channel tiles): the lanes take consecutive
//                                channels of a row, the rows of a block stride;
//              strided           grid (splits, channels): a block folds a strided share of one
//                                channel's runs, walking (outer index, position) incrementally;
//   stage 2  one thread per channel (few partials each) or one block per channel (many, or an
//            epilogue that cooperates, e.g. to rescan a window) folds that channel's partials
//            and hands the result to an epilogue functor, which stores it or updates observer
//            state.
//
// Both stages are deterministic (no atomics); min/max reductions are exact in any order, so
// the result equals the CPU reference bit for bit. The channels of a grid dimension stride
// (blocks loop over them), so any channel count works with a grid of at most kBlocksPerSm
// blocks per multiprocessor.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <algorithm>
#include <cstdint>

#include "fakequant/cuda/observers.h"
#include "fakequant/dispatch.h"
#include "fakequant/observers.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {

constexpr unsigned int kReduceThreads = 256;
constexpr unsigned int kReduceWarpLanes = 32;      // channel-innermost tiles are at most a warp wide
constexpr int64_t kReduceElementsPerThread = 16;   // stage-1 work per thread before splitting more
constexpr int64_t kReduceTargetBlocksPerSm = 8;    // stage-1 splits aim at this many blocks
constexpr int64_t kReduceMaxBlocksPerSm = 32;      // ... and never launch more (the rest strides)
constexpr int64_t kMaxGridY = 65535;

// Abs-max in `a`; min in `a` and max in `b`.
struct ReducePair {
  float a, b;
};

template <ReduceKind kKind>
__device__ __forceinline__ ReducePair reduce_identity_pair() {
  const float inf = __int_as_float(0x7F800000);
  return kKind == ReduceKind::kAbsMax ? ReducePair{0.0f, 0.0f} : ReducePair{inf, -inf};
}

template <ReduceKind kKind>
__device__ __forceinline__ ReducePair reduce_fold(ReducePair acc, float v) {
  if constexpr (kKind == ReduceKind::kAbsMax) {
    acc.a = nan_max(acc.a, fabsf(v));
  } else {
    acc.a = nan_min(acc.a, v);
    acc.b = nan_max(acc.b, v);
  }
  return acc;
}

template <ReduceKind kKind>
struct ReduceCombine {
  __device__ __forceinline__ ReducePair operator()(const ReducePair& x, const ReducePair& y) const {
    if constexpr (kKind == ReduceKind::kAbsMax) {
      return {nan_max(x.a, y.a), 0.0f};
    } else {
      return {nan_min(x.a, y.a), nan_max(x.b, y.b)};
    }
  }
};

// How the elements of one channel are laid out: numel = outer * channels * inner, with
// inner = channel_stride; element j of channel c (j < outer * inner) sits at
// (j / inner) * channels * inner + c * inner + j % inner.
struct ChannelLayout {
  int64_t channels = 0, inner = 0, outer = 0, per_channel = 0;

  // `a` must satisfy reduce_args_valid.
  __host__ static ChannelLayout of(const ReduceArgs& a) {
    ChannelLayout l;
    l.channels = a.channels;
    l.inner = a.channels == 1 ? a.numel : a.channel_stride;
    l.outer = (a.channels == 1 || a.numel == 0) ? 1 : a.numel / (a.channels * a.channel_stride);
    l.per_channel = a.channels == 1 ? a.numel : l.outer * l.inner;
    return l;
  }
};

inline bool dtype_valid(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

// What the launchers accept (checked on the host before anything is launched): a known dtype
// and a dense layout, numel a whole number of outer rows of channels * channel_stride.
inline bool reduce_args_valid(const ReduceArgs& a) {
  if (!dtype_valid(a.dtype) || a.numel < 0 || a.channels <= 0 || a.channel_stride <= 0) return false;
  if (a.channels == 1) return true;
  if (a.channel_stride > INT64_MAX / a.channels) return false;
  return a.numel % (a.channels * a.channel_stride) == 0;
}

inline size_t reduce_element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Everything the launch of a reduction depends on, computed on the host from the arguments
// (and the device's multiprocessor count): the stage-1 kernel, its grid, the partials.
struct ReducePlan {
  ReducePath path;
  ChannelLayout layout;
  unsigned int splits = 0;          // partials per channel (stage 1's gridDim.x)
  unsigned int grid_y = 1;          // channels (or channel tiles) the grid holds at once
  unsigned int tile_channels = 1;   // channel innermost: channels per tile (a row's lanes)
};

inline ReducePlan reduce_plan(const ReduceArgs& a) {
  ReducePlan p;
  if (!reduce_args_valid(a)) return p;  // kNone, no partials (the launchers refuse such arguments)
  p.layout = ChannelLayout::of(a);
  const ChannelLayout& l = p.layout;
  if (a.numel == 0) return p;  // kNone: the finish kernel starts from the identity
  const int64_t sms = current_sm_count();
  const int64_t target_blocks = sms * kReduceTargetBlocksPerSm;
  const int64_t max_blocks = sms * kReduceMaxBlocksPerSm;
  // Channel-major grids: `columns` channels (or tiles) of `per_column` work items each, with
  // `per_block` items per block before the column is split further.
  auto size_grid = [&](int64_t columns, int64_t per_column, int64_t per_block) {
    int64_t splits = (per_column + per_block - 1) / per_block;
    splits = std::max<int64_t>(1, std::min(splits, std::max<int64_t>(1, target_blocks / columns)));
    const int64_t grid_y = std::max<int64_t>(1, std::min({columns, kMaxGridY, std::max<int64_t>(1, max_blocks / splits)}));
    p.splits = static_cast<unsigned int>(splits);
    p.grid_y = static_cast<unsigned int>(grid_y);
  };
  const int64_t per_block = static_cast<int64_t>(kReduceThreads) * kReduceElementsPerThread;
  if (l.channels > 1 && l.inner == 1) {
    p.path.stage1 = ReduceStage1::kChannelInnermost;
    p.tile_channels = static_cast<unsigned int>(std::min<int64_t>(l.channels, kReduceWarpLanes));
    const int64_t tiles = (l.channels + p.tile_channels - 1) / p.tile_channels;
    const int64_t rows_per_block = kReduceThreads / p.tile_channels;
    size_grid(tiles, l.outer, rows_per_block * kReduceElementsPerThread);
  } else if (l.outer == 1) {
    p.path.stage1 = ReduceStage1::kRuns;
    // 16-byte loads need the first run to start aligned, and per channel every other run too
    // (per tensor, the kernel's scalar tail takes an odd end).
    const bool aligned = is_aligned16(a.input);
    p.path.vector_loads =
        l.channels == 1 ? aligned : aligned && (l.inner * static_cast<int64_t>(reduce_element_bytes(a.dtype))) % 16 == 0;
    size_grid(l.channels, l.per_channel, per_block);
  } else {
    p.path.stage1 = ReduceStage1::kStrided;
    size_grid(l.channels, l.per_channel, per_block);
  }
  return p;
}

// Partials: splits * channels pairs.
inline size_t reduce_partials_bytes(const ReduceArgs& a) {
  const ReducePlan p = reduce_plan(a);
  return static_cast<size_t>(p.splits) * static_cast<size_t>(p.layout.channels) * sizeof(ReducePair);
}

// --- stage 1 -----------------------------------------------------------------------------

// Runs: channel c is in[c * inner, (c + 1) * inner). With kVector, 8-element groups are read
// with 16-byte loads (the launcher checked the alignment of every run start).
template <typename T, ReduceKind kKind, bool kVector>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_runs_kernel(const T* __restrict__ in, ChannelLayout l, ReducePair* __restrict__ partials) {
  using BlockReduce = cub::BlockReduce<ReducePair, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t c = blockIdx.y; c < l.channels; c += gridDim.y) {
    ReducePair acc = reduce_identity_pair<kKind>();
    const T* run = in + c * l.inner;
    int64_t tail = 0;
    if constexpr (kVector) {
      const int64_t groups = l.inner / kMaskGroup;
      for (int64_t g = first; g < groups; g += step) {
        const Group<T> x = load_group<T, true>(run + g * kMaskGroup);
#pragma unroll
        for (int j = 0; j < kMaskGroup; ++j) acc = reduce_fold<kKind>(acc, to_float(x.v[j]));
      }
      tail = groups * kMaskGroup;
    }
    for (int64_t j = tail + first; j < l.inner; j += step) acc = reduce_fold<kKind>(acc, to_float(run[j]));
    const ReducePair total = BlockReduce(temp).Reduce(acc, ReduceCombine<kKind>());
    if (threadIdx.x == 0) partials[c * gridDim.x + blockIdx.x] = total;
    __syncthreads();  // temp is reused by the next channel
  }
}

// Channel innermost (inner == 1): element (row r, channel c) is in[r * channels + c]. Thread t
// takes channel tile * tile_channels + t % tile_channels of rows t / tile_channels + k * (rows
// per grid column), so a warp reads consecutive elements of a row (with fewer than 32
// channels, consecutive rows too); the column totals are folded through shared memory.
template <typename T, ReduceKind kKind>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_channel_innermost_kernel(const T* __restrict__ in, ChannelLayout l, unsigned int tile_channels,
                                    ReducePair* __restrict__ partials) {
  __shared__ ReducePair column[kReduceThreads];
  const unsigned int rows_per_block = kReduceThreads / tile_channels;
  const unsigned int lane_channel = threadIdx.x % tile_channels;
  const unsigned int lane_row = threadIdx.x / tile_channels;  // == rows_per_block: an idle thread
  const int64_t tiles = (l.channels + tile_channels - 1) / tile_channels;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * rows_per_block + lane_row;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * rows_per_block;
  const int64_t index_step = row_step * l.channels;
  for (int64_t t = blockIdx.y; t < tiles; t += gridDim.y) {
    const int64_t c = t * tile_channels + lane_channel;
    ReducePair acc = reduce_identity_pair<kKind>();
    if (lane_row < rows_per_block && c < l.channels) {
      int64_t i = first_row * l.channels + c;
      for (int64_t r = first_row; r < l.outer; r += row_step, i += index_step) acc = reduce_fold<kKind>(acc, to_float(in[i]));
    }
    column[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < tile_channels && c < l.channels) {
      ReducePair total = column[threadIdx.x];
      for (unsigned int k = 1; k < rows_per_block; ++k) total = ReduceCombine<kKind>()(total, column[k * tile_channels + threadIdx.x]);
      partials[c * gridDim.x + blockIdx.x] = total;
    }
    __syncthreads();  // column is reused by the next tile
  }
}

// Strided (outer > 1, inner > 1): thread k of the grid column takes elements j = k + m * step
// of the channel's outer * inner, at (o * channels + c) * inner + i for (o, i) = (j / inner,
// j % inner), advanced by (step_outer, step_inner) = (step / inner, step % inner) without a
// division per element.
template <typename T, ReduceKind kKind>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_strided_kernel(const T* __restrict__ in, ChannelLayout l, int64_t step_outer, int64_t step_inner,
                          ReducePair* __restrict__ partials) {
  using BlockReduce = cub::BlockReduce<ReducePair, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t first_outer = first / l.inner;
  const int64_t first_inner = first - first_outer * l.inner;
  const int64_t row = l.channels * l.inner;  // elements between one outer index and the next
  const int64_t index_step = step_outer * row + step_inner;
  const int64_t index_wrap = row - l.inner;  // from past the end of one run to the next run's start
  for (int64_t c = blockIdx.y; c < l.channels; c += gridDim.y) {
    ReducePair acc = reduce_identity_pair<kKind>();
    const T* channel = in + c * l.inner;
    int64_t o = first_outer, i = first_inner, index = first_outer * row + first_inner;
    while (o < l.outer) {
      acc = reduce_fold<kKind>(acc, to_float(channel[index]));
      o += step_outer;
      i += step_inner;
      index += index_step;
      if (i >= l.inner) {
        i -= l.inner;
        ++o;
        index += index_wrap;
      }
    }
    const ReducePair total = BlockReduce(temp).Reduce(acc, ReduceCombine<kKind>());
    if (threadIdx.x == 0) partials[c * gridDim.x + blockIdx.x] = total;
    __syncthreads();  // temp is reused by the next channel
  }
}

// --- stage 2 -----------------------------------------------------------------------------
//
// An epilogue is called once per channel with the channel's result. A cooperative epilogue
// (Epilogue::kCooperative, e.g. the window rescan of range_abs_max) is called by every thread
// of a block, the others by one thread. A zero result is +0: min and max of +0 and -0 are
// either, depending on the order in which a tree meets them, so the finish normalises the
// sign (as the CPU reference does) to keep results bit-identical.

__device__ __forceinline__ float positive_zero(float v) { return v + 0.0f; }  // -0 -> +0, else v

// One block per channel (channels with many partials, or a cooperative epilogue): the block
// folds the channel's partials with cub::BlockReduce.
template <ReduceKind kKind, typename Epilogue>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_finish_kernel(const ReducePair* __restrict__ partials, int64_t channels, unsigned int splits,
                         Epilogue epilogue) {
  using BlockReduce = cub::BlockReduce<ReducePair, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ ReducePair result;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    ReducePair acc = reduce_identity_pair<kKind>();
    for (unsigned int s = threadIdx.x; s < splits; s += blockDim.x) acc = ReduceCombine<kKind>()(acc, partials[c * splits + s]);
    const ReducePair total = BlockReduce(temp).Reduce(acc, ReduceCombine<kKind>());
    if (threadIdx.x == 0) result = ReducePair{positive_zero(total.a), positive_zero(total.b)};
    __syncthreads();
    if (Epilogue::kCooperative || threadIdx.x == 0) epilogue(c, result.a, result.b);
    __syncthreads();
  }
}

// One thread per channel (few partials a channel, i.e. many channels: a block per channel
// would mostly idle through its reduction).
template <ReduceKind kKind, typename Epilogue>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_finish_per_thread_kernel(const ReducePair* __restrict__ partials, int64_t channels, unsigned int splits,
                                    Epilogue epilogue) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += step) {
    ReducePair acc = reduce_identity_pair<kKind>();
    for (unsigned int s = 0; s < splits; ++s) acc = ReduceCombine<kKind>()(acc, partials[c * splits + s]);
    epilogue(c, positive_zero(acc.a), positive_zero(acc.b));
  }
}

// Partials per channel up to which one thread folds a channel.
constexpr unsigned int kReducePerThreadFinishSplits = 32;

// Launches stage 1 of `plan` over the elements of type T.
template <typename T, ReduceKind kKind>
void launch_reduce_stage1(const ReducePlan& plan, const T* in, ReducePair* partials, cudaStream_t stream) {
  const ChannelLayout& l = plan.layout;
  const dim3 grid(plan.splits, plan.grid_y);
  switch (plan.path.stage1) {
    case ReduceStage1::kRuns:
      if (plan.path.vector_loads) {
        reduce_runs_kernel<T, kKind, true><<<grid, kReduceThreads, 0, stream>>>(in, l, partials);
      } else {
        reduce_runs_kernel<T, kKind, false><<<grid, kReduceThreads, 0, stream>>>(in, l, partials);
      }
      break;
    case ReduceStage1::kChannelInnermost:
      reduce_channel_innermost_kernel<T, kKind><<<grid, kReduceThreads, 0, stream>>>(in, l, plan.tile_channels, partials);
      break;
    case ReduceStage1::kStrided: {
      const int64_t step = static_cast<int64_t>(plan.splits) * kReduceThreads;
      reduce_strided_kernel<T, kKind><<<grid, kReduceThreads, 0, stream>>>(in, l, step / l.inner, step % l.inner, partials);
      break;
    }
    case ReduceStage1::kNone:
      break;
  }
}

// Runs both stages over `args` and calls `epilogue(c, a, b)` for every channel c (by every
// thread of a block for a cooperative epilogue, by one thread otherwise). `partials` must hold reduce_partials_bytes(args). With no elements,
// stage 1 is skipped and the epilogue sees the identity. The arguments must have been
// validated (a known dtype, a dense layout); if stage 1 cannot be launched, nothing else is
// (the epilogue never runs on unwritten partials).
template <ReduceKind kKind, typename Epilogue>
cudaError_t launch_reduce_with(const ReduceArgs& args, void* partials_mem, Epilogue epilogue, cudaStream_t stream) {
  const ReducePlan plan = reduce_plan(args);
  ReducePair* partials = static_cast<ReducePair*>(partials_mem);
  if (plan.path.stage1 != ReduceStage1::kNone) {
    dispatch_dtype(args.dtype, [&](auto t) {
      using T = typename decltype(t)::type;
      launch_reduce_stage1<T, kKind>(plan, static_cast<const T*>(args.input), partials, stream);
    });
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  // plan.splits is 0 without elements: the finish starts from the identity.
  const int64_t channels = plan.layout.channels;
  if constexpr (!Epilogue::kCooperative) {
    if (plan.splits <= kReducePerThreadFinishSplits) {
      const LaunchShape shape = grid_for(channels, kReduceThreads);
      reduce_finish_per_thread_kernel<kKind><<<shape.blocks, shape.threads, 0, stream>>>(partials, channels,
                                                                                         plan.splits, epilogue);
      return cudaGetLastError();
    }
  }
  const unsigned int blocks = static_cast<unsigned int>(
      std::max<int64_t>(1, std::min<int64_t>(channels, current_sm_count() * kReduceTargetBlocksPerSm)));
  reduce_finish_kernel<kKind><<<blocks, kReduceThreads, 0, stream>>>(partials, channels, plan.splits, epilogue);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fakequant
