// Two-stage per-channel (or per-tensor) reductions with an epilogue, on the current stream,
// without host synchronisation:
//
//   stage 1  reduce_partials_kernel: grid (splits, channels); each block folds a strided
//            share of one channel's elements and writes one partial (cub::BlockReduce);
//   stage 2  reduce_finish_kernel: one block per channel folds that channel's partials
//            (cub::BlockReduce) and hands the result to an epilogue functor, called by every
//            thread of the block (so an epilogue may itself cooperate, e.g. to rescan a
//            window), which stores it or updates observer state.
//
// Both stages are deterministic (no atomics); min/max reductions are exact in any order, so
// the result equals the CPU reference bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cstdint>

#include "fakequant/observers.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {

constexpr unsigned int kReduceThreads = 256;

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
  int64_t channels, inner, outer, per_channel;

  __host__ static ChannelLayout of(const ReduceArgs& a) {
    ChannelLayout l;
    l.channels = a.channels;
    l.inner = a.channels == 1 ? a.numel : a.channel_stride;
    l.outer = (a.channels == 1 || a.numel == 0) ? 1 : a.numel / (a.channels * a.channel_stride);
    l.per_channel = a.channels == 1 ? a.numel : l.outer * l.inner;
    return l;
  }

  __device__ __forceinline__ int64_t offset(int64_t c, int64_t j) const {
    if (outer == 1) return c * inner + j;      // channel outermost (or the whole tensor)
    if (inner == 1) return j * channels + c;   // channel innermost (channels_last along C)
    const int64_t o = j / inner;
    return (o * channels + c) * inner + (j - o * inner);
  }
};

struct ReduceGrid {
  unsigned int splits;  // blocks per channel
  unsigned int channel_blocks;  // gridDim.y (channels are strided over when there are more)
};

inline ReduceGrid reduce_grid(const ChannelLayout& l) {
  constexpr int64_t kElementsPerThread = 16;
  const int64_t target_blocks = static_cast<int64_t>(current_sm_count()) * 8;
  const int64_t per_block = static_cast<int64_t>(kReduceThreads) * kElementsPerThread;
  int64_t splits = (l.per_channel + per_block - 1) / per_block;
  splits = std::max<int64_t>(1, std::min(splits, std::max<int64_t>(1, target_blocks / std::max<int64_t>(1, l.channels))));
  const int64_t channel_blocks = std::max<int64_t>(1, std::min<int64_t>(l.channels, 65535));
  return {static_cast<unsigned int>(splits), static_cast<unsigned int>(channel_blocks)};
}

// Partials: splits * channels pairs.
inline size_t reduce_partials_bytes(const ReduceArgs& a) {
  const ChannelLayout l = ChannelLayout::of(a);
  return static_cast<size_t>(reduce_grid(l).splits) * static_cast<size_t>(l.channels) * sizeof(ReducePair);
}

template <typename T, ReduceKind kKind, bool kVector>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_partials_kernel(const T* __restrict__ in, ChannelLayout l, ReducePair* __restrict__ partials) {
  using BlockReduce = cub::BlockReduce<ReducePair, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = blockIdx.y; c < l.channels; c += gridDim.y) {
    ReducePair acc = reduce_identity_pair<kKind>();
    const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (kVector && l.outer == 1) {
      // The channel is one contiguous run (always so for a per-tensor reduction): 8-element
      // groups with 16-byte loads (the launcher checked the alignment of every run start).
      const T* run = in + c * l.inner;
      const int64_t groups = l.inner / kMaskGroup;
      for (int64_t g = first; g < groups; g += step) {
        const Group<T> x = load_group<T, true>(run + g * kMaskGroup);
#pragma unroll
        for (int j = 0; j < kMaskGroup; ++j) acc = reduce_fold<kKind>(acc, to_float(x.v[j]));
      }
      for (int64_t j = groups * kMaskGroup + first; j < l.inner; j += step) acc = reduce_fold<kKind>(acc, to_float(run[j]));
    } else {
      for (int64_t j = first; j < l.per_channel; j += step) acc = reduce_fold<kKind>(acc, to_float(in[l.offset(c, j)]));
    }
    const ReducePair total = BlockReduce(temp).Reduce(acc, ReduceCombine<kKind>());
    if (threadIdx.x == 0) partials[c * gridDim.x + blockIdx.x] = total;
    __syncthreads();  // temp is reused by the next channel
  }
}

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
    if (threadIdx.x == 0) result = total;
    __syncthreads();
    epilogue(c, result.a, result.b);
    __syncthreads();
  }
}

// Runs both stages over `args` and calls `epilogue(c, a, b)` (every thread of a block) for
// every channel c. `partials` must hold reduce_partials_bytes(args). With no elements,
// stage 1 is skipped and the epilogue sees the identity.
template <ReduceKind kKind, typename Epilogue>
cudaError_t launch_reduce_with(const ReduceArgs& args, void* partials_mem, Epilogue epilogue, cudaStream_t stream) {
  const ChannelLayout l = ChannelLayout::of(args);
  const ReduceGrid grid = reduce_grid(l);
  ReducePair* partials = static_cast<ReducePair*>(partials_mem);
  unsigned int splits = grid.splits;
  if (args.numel > 0) {
    auto stage1 = [&](auto kernel, const auto* in) {
      kernel<<<dim3(grid.splits, grid.channel_blocks), kReduceThreads, 0, stream>>>(in, l, partials);
    };
    auto typed = [&](auto tag) {
      using T = decltype(tag);
      const T* in = static_cast<const T*>(args.input);
      // 16-byte loads need every channel's run to start aligned.
      const bool vector = l.outer == 1 && is_aligned16(in) && (l.inner * sizeof(T)) % 16 == 0;
      vector ? stage1(reduce_partials_kernel<T, kKind, true>, in) : stage1(reduce_partials_kernel<T, kKind, false>, in);
    };
    switch (args.dtype) {
      case DType::kFloat32:
        typed(float{});
        break;
      case DType::kFloat16:
        typed(Half{});
        break;
      case DType::kBFloat16:
        typed(BFloat16{});
        break;
    }
  } else {
    splits = 0;  // nothing to fold: the finish kernel starts from the identity
  }
  const unsigned int finish_blocks =
      static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(l.channels, current_sm_count() * 8LL)));
  reduce_finish_kernel<kKind><<<finish_blocks, kReduceThreads, 0, stream>>>(partials, l.channels, splits, epilogue);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fakequant
