// CUDA weight fake quantization with per-channel abs-max scales.
//
// One pass (each channel contiguous in memory and a block of channels fits on chip): one
// CUDA block per block of weight_channels_per_block(L) channels (whole mask bytes), grid-
// striding over them. The block stages its channels in shared memory (16-byte loads when
// aligned), reduces each channel's abs-max with cub::BlockReduce, writes the scales, then
// quant-dequantises from shared memory and writes output and mask: the weight is read from
// global memory once.
//
// Two passes otherwise (any axis, any dense layout, or channels too long for shared
// memory): an abs-max reduction into the scale buffer (atomicMax on the bits of |x|, exact
// and order-independent, see abs_bits), a tiny kernel turning the bits into scales, then
// the per-channel quant-dequant kernel with those device scales. No host synchronisation.
#include <cub/cub.cuh>
#include <cuda/functional>

#include <algorithm>
#include <cstdint>

#include "fakequant/cuda/launch.h"
#include "fakequant/cuda/weight_quant.h"
#include "fakequant/dispatch.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {
namespace {

constexpr int kReduceThreads = 256;
// Channel runs (channel_stride elements of one channel) at least this long are reduced in
// chunks by whole blocks; shorter runs by the column kernel (one thread per position of a
// row of channels, striding over rows), so that loads stay coalesced for every layout.
constexpr int64_t kLongRun = 1024;
constexpr int64_t kRunChunk = 8192;

// ---------------------------------------------------------------------------------------
// One pass.

template <typename T, Rounding kMode, int kThreads>
__global__ void __launch_bounds__(kThreads)
    weight_abs_max_one_pass_kernel(const T* __restrict__ in, T* __restrict__ out, uint8_t* __restrict__ mask,
                                   float* __restrict__ scales, int64_t channels, int64_t blocks, int len,
                                   int per_block, int32_t quant_min, int32_t quant_max, float eps,
                                   DType scale_dtype, bool vector_io) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  using Reduce = cub::BlockReduce<uint32_t, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ float s_scale[kMaskGroup];
  __shared__ float s_inv[kMaskGroup];
  __shared__ bool s_valid[kMaskGroup];

  const float half = symmetric_half_range(quant_min, quant_max);
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const float poison = __uint_as_float(0x7FC00000u);

  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t c0 = b * per_block;
    const int nch = static_cast<int>(per_block < channels - c0 ? per_block : channels - c0);
    // The block's elements start at a multiple of 8 (it owns whole mask bytes). Offsets inside
    // the tile are 32-bit, as the tile fits in shared memory, and the block count comes from
    // the host: 64-bit offsets (two registers each) and 64-bit divisions (one per mask group)
    // made ptxas spill some instantiations.
    const int64_t begin = c0 * len;
    const int count = nch * len;
    const T* __restrict__ src = in + begin;
    T* __restrict__ dst = out + begin;

    // 1. Stage the block's channels in shared memory; with one channel, take its abs-max on
    //    the way. Four 16-byte loads in flight per thread before the first shared store.
    uint32_t m = 0;
    int staged = 0;
    if (vector_io) {
      constexpr int kPerChunk = static_cast<int>(16 / sizeof(T));
      constexpr int kUnroll = 4;
      const int chunks = count / kPerChunk;
      const uint4* __restrict__ src4 = reinterpret_cast<const uint4*>(src);
      uint4* tile4 = reinterpret_cast<uint4*>(tile);
      for (int i0 = threadIdx.x; i0 < chunks; i0 += kUnroll * kThreads) {
        uint4 v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int i = i0 + u * kThreads;
          if (i < chunks) v[u] = src4[i];
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int i = i0 + u * kThreads;
          if (i < chunks) {
            tile4[i] = v[u];
            T e[kPerChunk];
            memcpy(e, &v[u], sizeof(e));
#pragma unroll
            for (int j = 0; j < kPerChunk; ++j) m = umax(m, abs_bits_of(e[j]));
          }
        }
      }
      staged = chunks * kPerChunk;
    }
    for (int i = staged + threadIdx.x; i < count; i += kThreads) {
      const T v = src[i];
      tile[i] = v;
      m = umax(m, abs_bits_of(v));
    }
    __syncthreads();

    // 2. One scale per channel (block-wide max, then the scalar formula on thread 0).
    for (int j = 0; j < nch; ++j) {
      if (nch > 1) {
        m = 0;
        for (int i = threadIdx.x; i < len; i += kThreads) m = umax(m, abs_bits_of(tile[j * len + i]));
      }
      const uint32_t block_max = Reduce(reduce_storage).Reduce(m, ::cuda::maximum<>{});
      if (threadIdx.x == 0) {
        const float s = weight_scale(__uint_as_float(block_max), half, eps, scale_dtype);
        scales[c0 + j] = s;
        s_scale[j] = s;
        s_inv[j] = inverse_scale(s);
        s_valid[j] = qparams_valid(s, 0, quant_min, quant_max);
      }
      __syncthreads();  // scale visible; reduce_storage reusable
    }

    // 3. Quant-dequant from shared memory, one 8-element mask group per thread.
    const int groups = static_cast<int>(mask_bytes(count));
    const int full_groups = count / kMaskGroup;
    for (int g = threadIdx.x; g < groups; g += kThreads) {
      const int e0 = g * kMaskGroup;
      int j = e0 / len;
      int within = e0 - j * len;
      const bool full = g < full_groups;
      Group<T> x;
      if (full) {
        x = load_group<T, true>(tile + e0);  // shared memory, 16-byte aligned
      } else {
#pragma unroll
        for (int t = 0; t < kMaskGroup; ++t) x.v[t] = e0 + t < count ? tile[e0 + t] : from_float<T>(0.0f);
      }
      float s = s_scale[j], inv = s_inv[j];
      bool valid = s_valid[j];
      Group<T> y;
      uint8_t bits = 0;
#pragma unroll
      for (int t = 0; t < kMaskGroup; ++t) {
        if (t > 0 && ++within == len) {
          within = 0;
          j = j + 1 < nch ? j + 1 : j;  // past the last channel only in the padding of a partial group
          s = s_scale[j], inv = s_inv[j], valid = s_valid[j];
        }
        const QuantDequantResult r = quant_dequant(to_float(x.v[t]), s, inv, 0.0f, qmin, qmax, kMode);
        y.v[t] = from_float<T>(valid ? r.value : poison);
        const bool exists = full || e0 + t < count;
        bits |= static_cast<uint8_t>((valid && r.in_range && exists) ? 1u : 0u) << t;
      }
      if (full) {
        if (vector_io) {
          store_group<T, true>(dst + e0, y);
        } else {
          store_group<T, false>(dst + e0, y);
        }
      } else {
#pragma unroll
        for (int t = 0; t < kMaskGroup; ++t) {
          if (e0 + t < count) dst[e0 + t] = y.v[t];
        }
      }
      if (mask != nullptr) mask[begin / kMaskGroup + g] = bits;
    }
    __syncthreads();  // the tile is overwritten by the next block of channels
  }
}

template <typename T, Rounding kMode>
void launch_one_pass(const WeightAbsMaxArgs& a, cudaStream_t stream) {
  // The one-pass test guarantees that a tile, hence a channel, fits in shared memory: both
  // lengths are far below 2^31.
  const int len = static_cast<int>(weight_channel_length(a));
  const int per_block = static_cast<int>(weight_channels_per_block(len));
  const int64_t tile = std::min<int64_t>(per_block, a.channels) * len;
  const size_t smem = static_cast<size_t>((tile * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16);
  const int64_t blocks = (a.channels + per_block - 1) / per_block;
  const unsigned int grid =
      static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{current_sm_count()} * 32)));
  const int64_t groups = mask_bytes(tile);
  const T* in = static_cast<const T*>(a.weight);
  T* out = static_cast<T*>(a.output);
  const bool vec = is_aligned16(in) && is_aligned16(out);
  auto go = [&](auto kernel, int threads) {
    kernel<<<grid, threads, smem, stream>>>(in, out, a.mask, a.scale, a.channels, blocks, len, per_block,
                                            a.quant_min, a.quant_max, a.eps, a.scale_dtype, vec);
  };
  // Threads per block follow the groups of one tile (short channels: small blocks, many of
  // them resident per multiprocessor).
  if (groups <= 64) {
    go(weight_abs_max_one_pass_kernel<T, kMode, 64>, 64);
  } else if (groups <= 256) {
    go(weight_abs_max_one_pass_kernel<T, kMode, 128>, 128);
  } else {
    go(weight_abs_max_one_pass_kernel<T, kMode, 256>, 256);
  }
}

// ---------------------------------------------------------------------------------------
// Two passes: reduction into bits (the scale buffer, zeroed first), bits -> scales.

// Short runs. Memory is [rows][row] with row = channels * stride; thread q of a virtual row
// of width row * fold owns position p = q % row (channel p / stride) of rows q / row,
// q / row + fold, ... (striding over blockIdx.y too). Consecutive threads read consecutive
// elements. A block first merges its maxima per channel in shared memory, then issues one
// global atomicMax per channel it touched.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    channel_abs_max_columns_kernel(const T* __restrict__ in, uint32_t* __restrict__ bits, int64_t channels,
                                   int64_t stride, int64_t rows, int64_t fold) {
  __shared__ uint32_t s_max[kReduceThreads + 2];
  const int64_t row = channels * stride;
  const int64_t width = row * fold;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kReduceThreads;
  const int64_t q = q0 + threadIdx.x;
  // Channels this block touches: all of them when rows are folded (row < kReduceThreads),
  // else those of positions [q0, q0 + kReduceThreads): at most (kReduceThreads - 1) / stride + 2.
  const int64_t c_lo = fold > 1 ? 0 : q0 / stride;
  const int64_t slots_max = fold > 1 ? channels : (kReduceThreads - 1) / stride + 2;
  const int slots = static_cast<int>(slots_max < channels - c_lo ? slots_max : channels - c_lo);
  for (int i = threadIdx.x; i < slots; i += kReduceThreads) s_max[i] = 0;
  __syncthreads();
  if (q < width) {
    const int64_t p = q % row;
    const int64_t step = fold * gridDim.y;
    uint32_t m = 0;
#pragma unroll 4
    for (int64_t r = q / row + fold * blockIdx.y; r < rows; r += step) m = umax(m, abs_bits_of(in[r * row + p]));
    atomicMax(&s_max[p / stride - c_lo], m);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < slots; i += kReduceThreads) {
    if (s_max[i] != 0) atomicMax(&bits[c_lo + i], s_max[i]);
  }
}

// Long runs: chunks of kRunChunk elements of one run each; a block keeps a running max while
// its chunks stay in one channel and flushes it (cub::BlockReduce, one atomicMax) when the
// channel changes and at the end.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    channel_abs_max_runs_kernel(const T* __restrict__ in, uint32_t* __restrict__ bits, int64_t channels,
                                int64_t stride, int64_t runs, int64_t chunks_per_run) {
  using Reduce = cub::BlockReduce<uint32_t, kReduceThreads>;
  __shared__ typename Reduce::TempStorage storage;
  auto flush = [&](int64_t c, uint32_t v) {
    const uint32_t block_max = Reduce(storage).Reduce(v, ::cuda::maximum<>{});
    if (threadIdx.x == 0) atomicMax(&bits[c], block_max);
    __syncthreads();
  };
  const int64_t total = runs * chunks_per_run;
  uint32_t m = 0;
  int64_t current = -1;  // block-uniform
  for (int64_t k = blockIdx.x; k < total; k += gridDim.x) {
    const int64_t run = k / chunks_per_run;
    const int64_t c = run % channels;
    if (c != current) {
      if (current >= 0) flush(current, m);
      m = 0;
      current = c;
    }
    const int64_t begin = run * stride + (k - run * chunks_per_run) * kRunChunk;
    const int64_t run_end = (run + 1) * stride;
    const int64_t end = begin + kRunChunk < run_end ? begin + kRunChunk : run_end;
#pragma unroll 4
    for (int64_t i = begin + threadIdx.x; i < end; i += kReduceThreads) m = umax(m, abs_bits_of(in[i]));
  }
  if (current >= 0) flush(current, m);
}

__global__ void scales_from_abs_max_bits_kernel(float* __restrict__ scales, int64_t channels, float half,
                                                float eps, DType scale_dtype) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    scales[c] = weight_scale(scales[c], half, eps, scale_dtype);  // the bits of |x|max read as a float are |x|max
  }
}

template <typename T>
void launch_reduction(const WeightAbsMaxArgs& a, cudaStream_t stream) {
  const T* in = static_cast<const T*>(a.weight);
  uint32_t* bits = reinterpret_cast<uint32_t*>(a.scale);
  const int64_t channels = a.channels;
  const int64_t stride = channels > 1 ? a.channel_stride : a.numel;
  const int64_t target_blocks = int64_t{current_sm_count()} * 8;
  if (stride >= kLongRun) {
    const int64_t runs = a.numel / stride;
    const int64_t chunks_per_run = (stride + kRunChunk - 1) / kRunChunk;
    const int64_t grid = std::max<int64_t>(1, std::min(runs * chunks_per_run, target_blocks));
    channel_abs_max_runs_kernel<T><<<static_cast<unsigned int>(grid), kReduceThreads, 0, stream>>>(
        in, bits, channels, stride, runs, chunks_per_run);
  } else {
    const int64_t row = channels * stride;
    const int64_t rows = a.numel / row;
    const int64_t fold = std::max<int64_t>(1, kReduceThreads / row);
    const int64_t grid_x = (row * fold + kReduceThreads - 1) / kReduceThreads;
    const int64_t want_y = (rows + fold - 1) / fold;
    const int64_t grid_y = std::max<int64_t>(1, std::min({want_y, int64_t{65535}, std::max<int64_t>(1, target_blocks / grid_x)}));
    const dim3 grid(static_cast<unsigned int>(grid_x), static_cast<unsigned int>(grid_y));
    channel_abs_max_columns_kernel<T><<<grid, kReduceThreads, 0, stream>>>(in, bits, channels, stride, rows, fold);
  }
}

template <typename T>
cudaError_t launch_typed(const WeightAbsMaxArgs& a, const int32_t* zero_points, cudaStream_t stream) {
  if (weight_abs_max_one_pass(a)) {
    if (a.rounding == Rounding::kHalfAway) {  // else kHalfEven: the only other mode accepted
      launch_one_pass<T, Rounding::kHalfAway>(a, stream);
    } else {
      launch_one_pass<T, Rounding::kHalfEven>(a, stream);
    }
    return cudaGetLastError();
  }
  if (zero_points == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(a.scale, 0, static_cast<size_t>(a.channels) * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  if (a.numel > 0) launch_reduction<T>(a, stream);
  const LaunchShape shape = grid_for(a.channels);
  scales_from_abs_max_bits_kernel<<<shape.blocks, shape.threads, 0, stream>>>(
      a.scale, a.channels, symmetric_half_range(a.quant_min, a.quant_max), a.eps, a.scale_dtype);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_fake_quant_per_channel(weight_quant_fake_quant_args(a), weight_quant_qparams(a, zero_points), stream);
}

size_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace

bool weight_abs_max_one_pass(const WeightAbsMaxArgs& a) {
  if (a.numel <= 0 || a.channels <= 0 || !weight_channels_contiguous(a)) return false;
  const int64_t len = weight_channel_length(a);
  const int64_t tile = std::min(weight_channels_per_block(len), a.channels) * len;
  return tile * static_cast<int64_t>(element_size(a.dtype)) <= kWeightTileBytes;
}

cudaError_t launch_fake_quant_weight_abs_max(const WeightAbsMaxArgs& a, const int32_t* zero_points,
                                             cudaStream_t stream) {
  // Deterministic roundings only, on both paths and before anything is written: the args carry
  // no seed for stochastic rounding (which the one-pass kernel would otherwise have replaced by
  // half_even without a word).
  if (a.rounding != Rounding::kHalfEven && a.rounding != Rounding::kHalfAway) return cudaErrorInvalidValue;
  if (a.channels <= 0) return cudaSuccess;
  if (a.numel < 0 || (a.numel > 0 && a.channels > 1 && a.channel_stride <= 0)) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, cudaErrorInvalidValue,
                        [&](auto t) { return launch_typed<typename decltype(t)::type>(a, zero_points, stream); });
}

}  // namespace cuda
}  // namespace fakequant
