// CUDA kernels of the ConvBN op (fakequant/convbn.h).
//
// Per-channel sums (batch moments; the backward's sum g and sum g * (z - mean)) are two-stage
// and deterministic (no atomics): stage 1 writes one double pair per (channel, split), stage 2
// folds a channel's partials in a fixed order (cub::BlockReduce) and hands the totals to an
// epilogue. Stage 1 has two shapes so that loads stay coalesced:
//   NCHW (inner = H*W > 1): grid (splits, channels); a block walks a strided share of one
//     channel's N runs of H*W contiguous elements;
//   channels_last (inner = 1): blocks of 32 x 8 threads, the 32 lanes of a warp on 32
//     consecutive channels of a row, 8 rows at a time, grid (row splits, channel tiles).
// Elementwise passes take 8 elements (one ReLU-mask byte) per thread, grid-striding, with
// 16-byte accesses when aligned; they compute the CPU reference's operations in its order
// (products rounded on their own, never contracted into an FMA), so their outputs and ReLU
// masks equal the CPU's bit for bit. Sums are accumulated in double, as on the CPU.
#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "fakequant/cuda/convbn.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {
namespace {

constexpr unsigned int kThreads = 256;
constexpr unsigned int kTileChannels = 32;  // channels_last stage 1: lanes across channels
constexpr unsigned int kTileRows = 8;       // ... and rows per block

struct SumPair {
  double a, b;
};

struct SumPairAdd {
  __device__ __forceinline__ SumPair operator()(const SumPair& x, const SumPair& y) const {
    return {x.a + y.a, x.b + y.b};
  }
};

__device__ __forceinline__ double to_double(float v) { return v; }
__device__ __forceinline__ double to_double(Half v) { return to_float(v); }
__device__ __forceinline__ double to_double(BFloat16 v) { return to_float(v); }
__device__ __forceinline__ double to_double(double v) { return v; }

// a * b rounded on its own: nvcc contracts a * b + c into an FMA by default, which the CPU
// reference (built with -ffp-contract=off) does not compute.
__device__ __forceinline__ float mul_uncontracted(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_uncontracted(double a, double b) { return __dmul_rn(a, b); }

__device__ __forceinline__ bool mask_bit(const uint8_t* mask, int64_t i) { return ((mask[i >> 3] >> (i & 7)) & 1u) != 0; }

// --- element functors of the reductions ------------------------------------------------

// (x - shift, (x - shift)^2), shift = the channel's first element.
template <typename T>
struct MomentsElement {
  const T* x;
  int64_t inner;
  __device__ __forceinline__ double shift(int64_t c) const { return to_double(x[c * inner]); }
  __device__ __forceinline__ SumPair operator()(int64_t i, double shift) const {
    const double d = to_double(x[i]) - shift;
    return {d, d * d};
  }
};

// (g, g * (z - mean)), g = dy * relu bit.
template <typename T>
struct GradSumsElement {
  const T* dy;
  const T* z;
  const uint8_t* mask;
  const double* mean;
  __device__ __forceinline__ double shift(int64_t c) const { return z != nullptr ? mean[c] : 0.0; }
  __device__ __forceinline__ SumPair operator()(int64_t i, double m) const {
    const double g = (mask == nullptr || mask_bit(mask, i)) ? to_double(dy[i]) : 0.0;
    return {g, z != nullptr ? g * (to_double(z[i]) - m) : 0.0};
  }
};

// --- stage 1 -----------------------------------------------------------------------------

// NCHW: block (split s, channel c) takes elements j = s * blockDim + t + k * step of the
// channel's outer * inner elements, walking (n, i) = (j / inner, j % inner) incrementally
// (step = step_q * inner + step_r, precomputed).
template <typename Element>
__global__ void __launch_bounds__(kThreads)
    sums_nchw_kernel(Element element, ActivationLayout l, int64_t step_q, int64_t step_r, SumPair* __restrict__ partials) {
  using BlockReduce = cub::BlockReduce<SumPair, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t per_channel = l.outer * l.inner;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t c = blockIdx.y; c < l.channels; c += gridDim.y) {
    const double shift = element.shift(c);
    SumPair acc{0.0, 0.0};
    int64_t n = first / l.inner, i = first - (first / l.inner) * l.inner;
    for (int64_t j = first; j < per_channel; j += step_q * l.inner + step_r) {
      const SumPair v = element((n * l.channels + c) * l.inner + i, shift);
      acc.a += v.a;
      acc.b += v.b;
      n += step_q;
      i += step_r;
      if (i >= l.inner) {
        i -= l.inner;
        ++n;
      }
    }
    const SumPair total = BlockReduce(temp).Reduce(acc, SumPairAdd());
    if (threadIdx.x == 0) partials[c * gridDim.x + blockIdx.x] = total;
    __syncthreads();  // temp is reused for the next channel
  }
}

// channels_last: threadIdx.x over 32 channels of a tile, threadIdx.y over rows.
template <typename Element>
__global__ void __launch_bounds__(kTileChannels * kTileRows)
    sums_nhwc_kernel(Element element, ActivationLayout l, SumPair* __restrict__ partials) {
  __shared__ SumPair tile[kTileRows][kTileChannels];
  const int64_t tiles = (l.channels + kTileChannels - 1) / kTileChannels;
  for (int64_t t = blockIdx.y; t < tiles; t += gridDim.y) {
    const int64_t c = t * kTileChannels + threadIdx.x;
    SumPair acc{0.0, 0.0};
    if (c < l.channels) {
      const double shift = element.shift(c);
      const int64_t step = static_cast<int64_t>(gridDim.x) * kTileRows;
      for (int64_t r = static_cast<int64_t>(blockIdx.x) * kTileRows + threadIdx.y; r < l.outer; r += step) {
        const SumPair v = element(r * l.channels + c, shift);
        acc.a += v.a;
        acc.b += v.b;
      }
    }
    tile[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < l.channels) {
      SumPair total = tile[0][threadIdx.x];
#pragma unroll
      for (unsigned int y = 1; y < kTileRows; ++y) total = SumPairAdd()(total, tile[y][threadIdx.x]);
      partials[c * gridDim.x + blockIdx.x] = total;
    }
    __syncthreads();
  }
}

// --- stage 2 -----------------------------------------------------------------------------

template <typename Finish>
__global__ void __launch_bounds__(kThreads)
    sums_finish_kernel(const SumPair* __restrict__ partials, int64_t channels, unsigned int splits, Finish finish) {
  using BlockReduce = cub::BlockReduce<SumPair, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    SumPair acc{0.0, 0.0};
    for (unsigned int s = threadIdx.x; s < splits; s += blockDim.x) acc = SumPairAdd()(acc, partials[c * splits + s]);
    const SumPair total = BlockReduce(temp).Reduce(acc, SumPairAdd());
    if (threadIdx.x == 0) finish(c, total);
    __syncthreads();
  }
}

template <typename T>
struct MomentsFinish {
  const T* x;
  ActivationLayout l;
  double* mean;
  double* var;
  __device__ void operator()(int64_t c, SumPair s) const {
    const double n = static_cast<double>(l.outer * l.inner);
    const double shift = n > 0 ? to_double(x[c * l.inner]) : 0.0;
    convbn_moments_from_sums(shift, s.a, s.b, n, mean + c, var + c);
  }
};

struct GradSumsFinish {
  int64_t channels;
  double* sums;
  __device__ void operator()(int64_t c, SumPair s) const {
    sums[c] = s.a;
    sums[channels + c] = s.b;
  }
};

struct SumsGrid {
  bool nhwc;
  dim3 grid, block;
  unsigned int splits;
};

SumsGrid sums_grid(const ActivationLayout& l) {
  const int64_t target_blocks = static_cast<int64_t>(current_sm_count()) * 8;
  // Blocks along the channels (NCHW) or channel tiles (channels_last): at most 32 per
  // multiprocessor, as grid_for, and within gridDim.y's 65,535; the kernels stride over the rest.
  const int64_t max_channel_blocks = std::min<int64_t>(65535, static_cast<int64_t>(current_sm_count()) * 32);
  SumsGrid g;
  g.nhwc = l.inner == 1 && l.channels > 1;
  if (g.nhwc) {
    const int64_t tiles = (l.channels + kTileChannels - 1) / kTileChannels;
    int64_t splits = (l.outer + kTileRows * 16 - 1) / (kTileRows * 16);
    splits = std::max<int64_t>(1, std::min(splits, std::max<int64_t>(1, target_blocks / tiles)));
    g.splits = static_cast<unsigned int>(splits);
    g.grid = dim3(g.splits, static_cast<unsigned int>(std::min<int64_t>(tiles, max_channel_blocks)));
    g.block = dim3(kTileChannels, kTileRows);
  } else {
    const int64_t per_channel = l.outer * l.inner;
    int64_t splits = (per_channel + kThreads * 16 - 1) / (kThreads * 16);
    splits = std::max<int64_t>(1, std::min(splits, std::max<int64_t>(1, target_blocks / std::max<int64_t>(1, l.channels))));
    g.splits = static_cast<unsigned int>(splits);
    const int64_t channel_blocks = std::max<int64_t>(1, std::min(l.channels, max_channel_blocks));
    g.grid = dim3(g.splits, static_cast<unsigned int>(channel_blocks));
    g.block = dim3(kThreads);
  }
  return g;
}

template <typename Element, typename Finish>
cudaError_t launch_sums(const ActivationLayout& l, Element element, Finish finish, void* workspace, cudaStream_t stream) {
  SumPair* partials = static_cast<SumPair*>(workspace);
  const SumsGrid g = sums_grid(l);
  unsigned int splits = g.splits;
  if (l.numel() > 0) {
    if (g.nhwc) {
      sums_nhwc_kernel<<<g.grid, g.block, 0, stream>>>(element, l, partials);
    } else {
      const int64_t step = static_cast<int64_t>(g.splits) * kThreads;
      const int64_t inner = std::max<int64_t>(l.inner, 1);
      sums_nchw_kernel<<<g.grid, g.block, 0, stream>>>(element, l, step / inner, step % inner, partials);
    }
  } else {
    splits = 0;
  }
  const unsigned int blocks =
      static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(l.channels, current_sm_count() * 8LL)));
  sums_finish_kernel<<<blocks, kThreads, 0, stream>>>(partials, l.channels, splits, finish);
  return cudaGetLastError();
}

// --- elementwise passes ------------------------------------------------------------------

// The channel of a memory offset and the position in its run. A thread of an elementwise
// pass splits two offsets below 2^32 (its first group and the grid's stride, see
// elementwise_grid), with 32-bit divisions, and steps from there: a 64-bit division per group
// is a subroutine call, and the registers live across it spilled.
struct ChannelCursor {
  int64_t c, i;
  __device__ __forceinline__ ChannelCursor(uint32_t offset, const ActivationLayout& l) {
    // A divisor of 2^32 or more exceeds the offset (and the run): quotient 0, remainder all.
    const uint32_t run = l.inner > UINT32_MAX ? 0u : offset / static_cast<uint32_t>(l.inner);
    i = offset - static_cast<int64_t>(run) * l.inner;
    c = l.channels > UINT32_MAX ? run : run % static_cast<uint32_t>(l.channels);
  }
  // One element on.
  __device__ __forceinline__ void next(const ActivationLayout& l) {
    if (++i == l.inner) {
      i = 0;
      if (++c == l.channels) c = 0;
    }
  }
  // `step` elements on, step given as its own split (c < channels, i < inner).
  __device__ __forceinline__ void advance(const ChannelCursor& step, const ActivationLayout& l) {
    i += step.i;
    c += step.c;
    if (i >= l.inner) {
      i -= l.inner;
      ++c;
    }
    if (c >= l.channels) c -= l.channels;
  }
};

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    epilogue_kernel(const T* in, T* out, uint8_t* __restrict__ mask, const typename AccOf<T>::type* __restrict__ coef,
                    ActivationLayout l) {
  using Acc = typename AccOf<T>::type;
  const int64_t numel = l.numel();
  const int64_t groups = mask_bytes(numel);
  const int64_t full = numel / kMaskGroup;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x;
  // After a group the cursor is at its end; the thread's next group starts `gap` further on
  // (only the last group is partial, and none follows it).
  ChannelCursor cur(first * static_cast<uint32_t>(kMaskGroup), l);
  const ChannelCursor gap((static_cast<uint32_t>(stride) - 1) * static_cast<uint32_t>(kMaskGroup), l);
  for (int64_t g = first; g < groups; g += stride, cur.advance(gap, l)) {
    const int64_t base = g * kMaskGroup;
    const int valid = g < full ? kMaskGroup : static_cast<int>(numel - base);
    // The tail's loops are unrolled with a guard (not bounded by `valid`) so that the group
    // stays in registers: a runtime index would put it in local memory.
    Group<T> x;
    if (kVector && g < full) {
      x = load_group<T, true>(in + base);
    } else {
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        if (j < valid) x.v[j] = in[base + j];
      }
    }
    unsigned int bits = 0;
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) {
      if (j < valid) {
        Acc v = mul_uncontracted(load_acc(x.v[j]), coef[cur.c]) + coef[l.channels + cur.c];
        if (mask != nullptr) v = v <= Acc(0) ? Acc(0) : v;  // NaN passes, as torch.relu
        x.v[j] = store_as<T, Acc>(v);
        // The bit is that of the stored output, as on the CPU: a positive value that rounds
        // to 0 in fp16 / bf16 passes no gradient; NaN gives 0.
        if (mask != nullptr) bits |= static_cast<unsigned int>(load_acc(x.v[j]) > Acc(0)) << j;
        cur.next(l);
      }
    }
    if (kVector && g < full) {
      store_group<T, true>(out + base, x);
    } else {
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        if (j < valid) out[base + j] = x.v[j];
      }
    }
    if (mask != nullptr) mask[g] = static_cast<uint8_t>(bits);
  }
}

// At least 4 blocks per multiprocessor (at most 64 registers): the float64 instantiation,
// with two groups of 8 doubles in flight, would otherwise take 80.
template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads, 4)
    backward_kernel(const T* __restrict__ dy, const T* __restrict__ z, const uint8_t* __restrict__ mask,
                    const typename AccOf<T>::type* __restrict__ coef, T* __restrict__ dz, ActivationLayout l) {
  using Acc = typename AccOf<T>::type;
  const int64_t numel = l.numel();
  const int64_t groups = mask_bytes(numel);
  const int64_t full = numel / kMaskGroup;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t C = l.channels;
  const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x;
  // After a group the cursor is at its end; the thread's next group starts `gap` further on
  // (only the last group is partial, and none follows it).
  ChannelCursor cur(first * static_cast<uint32_t>(kMaskGroup), l);
  const ChannelCursor gap((static_cast<uint32_t>(stride) - 1) * static_cast<uint32_t>(kMaskGroup), l);
  for (int64_t g = first; g < groups; g += stride, cur.advance(gap, l)) {
    const int64_t base = g * kMaskGroup;
    const int valid = g < full ? kMaskGroup : static_cast<int>(numel - base);
    Group<T> gy, zz;  // gy is overwritten with the result, element by element
    if (kVector && g < full) {
      gy = load_group<T, true>(dy + base);
      if (z != nullptr) zz = load_group<T, true>(z + base);
    } else {
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        if (j < valid) {
          gy.v[j] = dy[base + j];
          if (z != nullptr) zz.v[j] = z[base + j];
        }
      }
    }
    const unsigned int bits = mask != nullptr ? mask[g] : 0xFFu;
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) {
      if (j < valid) {
        const int64_t c = cur.c;
        const Acc gv = ((bits >> j) & 1u) ? load_acc(gy.v[j]) : Acc(0);
        const Acc centered =
            z != nullptr ? mul_uncontracted(load_acc(zz.v[j]) - coef[2 * C + c], coef[3 * C + c]) : Acc(0);
        gy.v[j] = store_as<T, Acc>(coef[c] * ((gv - coef[C + c]) - centered));
        cur.next(l);
      }
    }
    if (kVector && g < full) {
      store_group<T, true>(dz + base, gy);
    } else {
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        if (j < valid) dz[base + j] = gy.v[j];
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fold_kernel(const T* __restrict__ w, typename AccOf<T>::type* __restrict__ out, const double* __restrict__ scale,
                int64_t numel, int64_t length) {
  using Acc = typename AccOf<T>::type;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const Acc s = static_cast<Acc>(scale[i / length]);
    if constexpr (std::is_same_v<Acc, float>) {
      out[i] = mul_rn(load_acc(w[i]), s);  // one float32 product, as on the CPU
    } else {
      out[i] = load_acc(w[i]) * s;
    }
  }
}

// One block per output channel (grid-striding): grad_weight and the channel's sum.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    weight_grad_kernel(const T* __restrict__ gc, const T* __restrict__ w, const uint8_t* __restrict__ mask,
                       const double* __restrict__ scale, T* __restrict__ gw, double* __restrict__ sums, int64_t channels,
                       int64_t length) {
  using Acc = typename AccOf<T>::type;
  using BlockReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const Acc s = scale != nullptr ? static_cast<Acc>(scale[c]) : Acc(1);
    double acc = 0.0;
    for (int64_t j = c * length + threadIdx.x; j < (c + 1) * length; j += blockDim.x) {
      const Acc d = (mask == nullptr || mask_bit(mask, j)) ? load_acc(gc[j]) : Acc(0);
      if constexpr (std::is_same_v<Acc, float>) {
        gw[j] = store_as<T, Acc>(mul_rn(d, s));
      } else {
        gw[j] = store_as<T, Acc>(d * s);
      }
      acc += static_cast<double>(d) * to_double(w[j]);
    }
    if (sums != nullptr) {
      const double total = BlockReduce(temp).Sum(acc);
      if (threadIdx.x == 0) sums[c] = total;
      __syncthreads();
    }
  }
}

__global__ void channels_kernel(ConvBnChannelArgs a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < a.channels; c += stride) {
    convbn_channel(a, c);
  }
}

// The elementwise passes' grid: grid_for's, and at most 2^21 blocks, so that a thread's first
// element and the grid's stride in elements (at most 2^21 * 256 * 8 = 2^32) split in 32 bits.
constexpr unsigned int kMaxElementwiseBlocks = static_cast<unsigned int>((uint64_t{1} << 32) / (kThreads * kMaskGroup));

LaunchShape elementwise_grid(int64_t groups) {
  LaunchShape shape = grid_for(groups, kThreads);
  shape.blocks = std::min(shape.blocks, kMaxElementwiseBlocks);
  return shape;
}

bool vector_ok(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p != nullptr && !is_aligned16(p)) return false;
  }
  return true;
}

}  // namespace

size_t channel_sums_workspace_bytes(const ActivationLayout& layout) {
  return static_cast<size_t>(sums_grid(layout).splits) * static_cast<size_t>(std::max<int64_t>(layout.channels, 1)) *
         sizeof(SumPair);
}

cudaError_t launch_channel_moments(const ChannelMomentsArgs& a, void* workspace, cudaStream_t stream) {
  return dispatch_convbn_dtype(a.dtype, cudaErrorInvalidValue, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.input);
    return launch_sums(a.layout, MomentsElement<T>{x, a.layout.inner}, MomentsFinish<T>{x, a.layout, a.mean, a.var},
                       workspace, stream);
  });
}

cudaError_t launch_channel_grad_sums(const ChannelGradSumsArgs& a, void* workspace, cudaStream_t stream) {
  return dispatch_convbn_dtype(a.dtype, cudaErrorInvalidValue, [&](auto tag) {
    using T = decltype(tag);
    const GradSumsElement<T> element{static_cast<const T*>(a.grad_output), static_cast<const T*>(a.pre_bn),
                                     a.relu_mask, a.mean};
    return launch_sums(a.layout, element, GradSumsFinish{a.layout.channels, a.sums}, workspace, stream);
  });
}

cudaError_t launch_convbn_epilogue(const ConvBnEpilogueArgs& a, cudaStream_t stream) {
  const int64_t groups = mask_bytes(a.layout.numel());
  if (groups == 0) return cudaSuccess;
  const LaunchShape shape = elementwise_grid(groups);
  return dispatch_convbn_dtype(a.dtype, cudaErrorInvalidValue, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const T* in = static_cast<const T*>(a.input);
    T* out = static_cast<T*>(a.output);
    const Acc* coef = static_cast<const Acc*>(a.coef);
    if (vector_ok({in, out})) {
      epilogue_kernel<T, true><<<shape.blocks, shape.threads, 0, stream>>>(in, out, a.relu_mask, coef, a.layout);
    } else {
      epilogue_kernel<T, false><<<shape.blocks, shape.threads, 0, stream>>>(in, out, a.relu_mask, coef, a.layout);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_convbn_backward(const ConvBnBackwardArgs& a, cudaStream_t stream) {
  const int64_t groups = mask_bytes(a.layout.numel());
  if (groups == 0) return cudaSuccess;
  const LaunchShape shape = elementwise_grid(groups);
  return dispatch_convbn_dtype(a.dtype, cudaErrorInvalidValue, [&](auto tag) {
    using T = decltype(tag);
    const ConvBnBackwardBuffers<T> b = typed_buffers<T>(a);
    const T* dy = b.grad_output;
    const T* z = b.pre_bn;
    T* dz = b.grad_pre_bn;
    const auto* coef = b.coef;
    if (vector_ok({dy, z, dz})) {
      backward_kernel<T, true><<<shape.blocks, shape.threads, 0, stream>>>(dy, z, a.relu_mask, coef, dz, a.layout);
    } else {
      backward_kernel<T, false><<<shape.blocks, shape.threads, 0, stream>>>(dy, z, a.relu_mask, coef, dz, a.layout);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_fold_weight(const FoldWeightArgs& a, cudaStream_t stream) {
  const int64_t numel = a.channels * a.channel_length;
  if (numel == 0) return cudaSuccess;
  const LaunchShape shape = grid_for(numel, kThreads);
  return dispatch_convbn_dtype(a.dtype, cudaErrorInvalidValue, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    fold_kernel<T><<<shape.blocks, shape.threads, 0, stream>>>(static_cast<const T*>(a.weight), static_cast<Acc*>(a.folded),
                                                               a.scale, numel, a.channel_length);
    return cudaGetLastError();
  });
}

cudaError_t launch_weight_grad(const WeightGradArgs& a, cudaStream_t stream) {
  if (a.channels == 0) return cudaSuccess;
  const unsigned int blocks =
      static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(a.channels, current_sm_count() * 8LL)));
  return dispatch_convbn_dtype(a.dtype, cudaErrorInvalidValue, [&](auto tag) {
    using T = decltype(tag);
    weight_grad_kernel<T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(a.grad_conv), static_cast<const T*>(a.weight), a.mask, a.scale,
        static_cast<T*>(a.grad_weight), a.weight_sums, a.channels, a.channel_length);
    return cudaGetLastError();
  });
}

cudaError_t launch_convbn_channels(const ConvBnChannelArgs& a, cudaStream_t stream) {
  if (a.channels == 0) return cudaSuccess;
  const LaunchShape shape = grid_for(a.channels, 128);
  channels_kernel<<<shape.blocks, shape.threads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fakequant
