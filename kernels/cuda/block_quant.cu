// CUDA block-scaled fake quantization (fakequant/block_quant.h): the same tiles, statistics,
// transforms (block_transform) and element rounding (block_element) as the CPU reference, so
// outputs, masks, scales, zero points and tensor_amax are bit-identical.
//
// Pass 1 (only where block_quant_needs_tensor_amax): *tensor_amax is zeroed, then a grid-stride
// abs-max over the whole tensor (atomicMax on abs_bits, exact and order-free). The bits are
// turned into the float (a NaN into the canonical quiet NaN, as the CPU does) by pass 2.
//
// Pass 2, one of three kernels chosen on the host:
//   tiles   every tile segment starts on a mask byte (cols and block_cols multiples of 8) and a
//           tile holds at most kThreads mask groups (2,048 elements): the MX, NVFP4 and
//           per-group LLM cases, per-row up to 2,048 columns, 16 x 16. A team of threads (a power
//           of two) per tile, one 8-element group per thread held in registers: the input is read
//           once. Team reductions go through shared memory (a tree, one barrier per level: the
//           CUDA emulation has no warp shuffles), the team leader computes the transform, every
//           thread quantises its group and writes its whole mask byte.
//   whole   one tile covers the tensor and its rule reads the abs-max only (per-tensor FP8):
//           the transform follows from pass 1's tensor abs-max, every thread of the grid
//           quantises 8-element groups.
//   generic anything else (unaligned rows or tiles, tiles of more than 2,048 elements, 128 x 128
//           FP8, a whole-tensor min/max tile). A block takes chunks of whole tile rows (bands)
//           that start on a mask byte; per window of tile columns it reduces each tile with a
//           team (reading global memory), keeps the transforms in shared memory and then
//           quantises the window's mask bytes (reading the input again: two reads). A mask byte
//           belongs to the window holding its first element; the few tiles its other elements
//           may fall in (up to 7 columns on, or the first tiles of the next row) are reduced in
//           that window too, so every mask byte is written whole by one thread.
//
// Stochastic rounding: element i takes word i % 4 of stochastic_words(i / 4, seed[0], seed[1]),
// as the CPU reference (the seed is read from device memory: no host synchronisation).
#include <cub/block/block_reduce.cuh>
#include <cuda/functional>

#include <algorithm>
#include <cstdint>

#include "fakequant/cuda/block_quant.h"
#include "fakequant/dispatch.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Transforms a generic block keeps in (dynamic) shared memory per window: 18 KB at most.
constexpr int64_t kCacheTiles = 768;
// Columns of tiles past a window (and at the start of a row) that a mask byte whose first
// element lies in the window can reach: 7 columns, i.e. up to 7 tiles of width 1, plus one.
constexpr int64_t kReach = 8;

// What the host works out once and every kernel reads: the geometry with the block shape
// clipped to the matrix (the same tiles), and each kernel's own layout.
struct BlockPlan {
  int64_t rows = 0, cols = 0, block_rows = 1, block_cols = 1;
  int64_t grid_rows = 0, grid_cols = 0, tiles = 0, numel = 0;
  int log2_team = 0;   // threads per tile (tiles, generic)
  int row_bytes = 1;   // tiles: mask bytes in a row of a tile
  int log2_lanes_x = 0;  // generic: team lanes along a tile row
  int64_t bands_per_chunk = 1, chunks = 0;  // generic: tile rows per block step
  int64_t window = 1;  // generic: tile columns a window owns
  int64_t reach = 0;   // generic: kReach where a mask byte can straddle tiles, else 0
  bool whole = false;
  bool needs_amax = false;
  bool min_max = false;
  bool stochastic = false;
};

// --- shared pieces ------------------------------------------------------------------------

// A tile's statistics while they are gathered: the abs-max as abs_bits (a NaN element gives
// bits above 0x7F800000, so it flags NaN too) and min / max by comparisons that skip NaN
// (the flag replaces them at the end). All exact and order-free: any split gives the CPU's
// values, except the sign of a zero min or max (+0 or -0 first), which no output depends on:
// int_affine widens to min(lo, 0) and max(hi, 0); int_affine_float_zp takes hi - lo, whose
// zero sign only reaches a zero scale that eps replaces, and adds lo to a positive product.
struct Stats {
  uint32_t bits;
  float lo, hi;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ Stats stats_identity() {
  return {0u, __uint_as_float(0x7F800000u), __uint_as_float(0xFF800000u)};
}

__device__ __forceinline__ void stats_fold(Stats& s, float v, bool min_max) {
  s.bits = umax(s.bits, abs_bits(v));
  if (min_max) {
    s.lo = v < s.lo ? v : s.lo;
    s.hi = v > s.hi ? v : s.hi;
  }
}

__device__ __forceinline__ BlockStats stats_finish(const Stats& s) {
  const float qnan = __uint_as_float(0x7FC00000u);
  const bool nan = s.bits > 0x7F800000u;
  return {nan ? qnan : __uint_as_float(s.bits), nan ? qnan : s.lo, nan ? qnan : s.hi};
}

// The partials of a block's teams: thread t's at index t.
struct TeamScratch {
  uint32_t bits[kThreads];
  float lo[kThreads];
  float hi[kThreads];
};

// Combines the partials of each team of 2^log2_team consecutive threads (a tree, one barrier a
// level; every thread of the block calls it). The team's first thread gets the team's
// statistics. Ends with a barrier, so the scratch may be rewritten right after.
__device__ __forceinline__ Stats team_reduce(Stats mine, int log2_team, bool min_max, TeamScratch& s) {
  const int t = threadIdx.x;
  s.bits[t] = mine.bits;
  s.lo[t] = mine.lo;
  s.hi[t] = mine.hi;
  __syncthreads();
  const int lane = t & ((1 << log2_team) - 1);
  for (int d = (1 << log2_team) >> 1; d > 0; d >>= 1) {
    if (lane < d) {
      s.bits[t] = umax(s.bits[t], s.bits[t + d]);
      if (min_max) {
        const float lo = s.lo[t + d], hi = s.hi[t + d];
        s.lo[t] = lo < s.lo[t] ? lo : s.lo[t];
        s.hi[t] = hi > s.hi[t] ? hi : s.hi[t];
      }
    }
    __syncthreads();
  }
  const Stats total = {s.bits[t], s.lo[t], s.hi[t]};
  __syncthreads();
  return total;
}

// The whole tensor's abs-max as pass 1 left it (abs_bits), as a float: NaN bits become the
// canonical quiet NaN, as the CPU reference stores it. Block 0 stores the float back; the
// conversion maps its own result to itself, so a block reading before or after that store
// gets the same value.
__device__ __forceinline__ float read_tensor_amax(float* p, bool needed) {
  if (!needed) return 0.0f;
  const uint32_t bits = __float_as_uint(*p);
  const float v = bits > 0x7F800000u ? __uint_as_float(0x7FC00000u) : __uint_as_float(bits);
  if (blockIdx.x == 0 && threadIdx.x == 0) *p = v;
  return v;
}

// Writes a tile's scale and (where asked for) zero point: every kernel stores them alike.
__device__ __forceinline__ void store_qparams(const BlockQuantArgs& a, int64_t tile, const BlockTransform& t) {
  a.scale[tile] = t.scale;
  if (a.zero_point != nullptr) a.zero_point[tile] = static_cast<int32_t>(t.zero_point);
}

// A tile's transform from its statistics; writes the tile's scale and zero point.
__device__ __forceinline__ BlockTransform tile_transform(const BlockQuantArgs& a, const BlockPlan& p, const Stats& s,
                                                          float tensor_amax, int64_t tile) {
  const BlockTransform t = block_transform(a, stats_finish(s), tensor_amax, p.whole);
  store_qparams(a, tile, t);
  return t;
}

struct ElementContext {
  MiniFloat mf;
  float qmin, qmax;
};

__device__ __forceinline__ ElementContext element_context(const BlockQuantArgs& a) {
  return {minifloat_of(a.format), static_cast<float>(a.quant_min), static_cast<float>(a.quant_max)};
}

// The Philox key and offset (read from device memory for stochastic rounding only), and the
// random words of mask group g (zeros for the deterministic roundings, which compute none).
__device__ __forceinline__ PhiloxSeed seed_of(const BlockQuantArgs& a, bool stochastic) {
  if (!stochastic) return {0, 0};
  return {static_cast<uint64_t>(a.seed[0]), static_cast<uint64_t>(a.seed[1])};
}

__device__ __forceinline__ GroupRandom random_of(int64_t g, PhiloxSeed seed, bool stochastic) {
  GroupRandom r{};
  if (stochastic) r = group_random(g, seed.key, seed.offset);
  return r;
}

template <typename T>
__device__ __forceinline__ T quantise(T x, const BlockTransform& t, const BlockQuantArgs& a, const ElementContext& e,
                                      uint32_t random, bool& in_range) {
  const BlockElementResult r = block_element(to_float(x), t, a.format, e.mf, e.qmin, e.qmax, a.rounding, random);
  in_range = r.in_range;
  return from_float<T>(r.value);
}

// The transforms a block keeps (tiles and generic kernels), in dynamic shared memory sized by
// the launcher: a step's tiles, or a window's.
extern __shared__ __align__(16) unsigned char block_quant_transforms_raw[];

// What every thread of the team kernels (tiles, generic) works out before its first tile: the
// launch-wide values and its place in its team of 2^log2_team consecutive threads.
struct TeamStart {
  BlockTransform* transforms;  // the block's transforms in dynamic shared memory
  float tensor_amax;
  ElementContext ctx;
  PhiloxSeed seed;
  int team;  // threads a team
  int slot;  // the thread's team in the block
  int lane;  // the thread in its team
};

__device__ __forceinline__ TeamStart team_start(const BlockQuantArgs& a, const BlockPlan& p) {
  const int team = 1 << p.log2_team;
  const int thread = static_cast<int>(threadIdx.x);
  return {reinterpret_cast<BlockTransform*>(block_quant_transforms_raw),
          read_tensor_amax(a.tensor_amax, p.needs_amax),
          element_context(a),
          seed_of(a, p.stochastic),
          team,
          thread >> p.log2_team,
          thread & (team - 1)};
}

// ---------------------------------------------------------------------------------------
// Pass 1: the whole tensor's abs-max bits, atomicMax into *bits (zeroed by the launcher).

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    block_tensor_abs_max_kernel(const T* __restrict__ in, int64_t numel, uint32_t* __restrict__ bits) {
  using Reduce = cub::BlockReduce<uint32_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  uint32_t m = 0;
  for_each_group(numel, [&](int64_t, int64_t base, bool full) {
    const Group<T> x = load_group_padded<T, kVector>(in, base, full, numel);  // padding loads as 0
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) {
      m = umax(m, abs_bits_of(x.v[j]));
    }
  });
  const uint32_t block_max = Reduce(storage).Reduce(m, ::cuda::maximum<>{});
  if (threadIdx.x == 0 && block_max != 0) atomicMax(bits, block_max);
}

// ---------------------------------------------------------------------------------------
// Pass 2, aligned tiles of at most kThreads groups: a team per tile, a group per thread.
// Thread `lane` of a team takes the tile's group (row lane / row_bytes, byte lane % row_bytes).

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    block_quant_tiles_kernel(const T* __restrict__ in, T* __restrict__ out, BlockQuantArgs a, BlockPlan p) {
  __shared__ TeamScratch scratch;
  const TeamStart st = team_start(a, p);
  const int row_in_tile = st.lane / p.row_bytes;
  const int byte_in_row = st.lane - row_in_tile * p.row_bytes;
  const int64_t per_step = kThreads >> p.log2_team;  // tiles a block takes at once
  for (int64_t t0 = blockIdx.x * per_step; t0 < p.tiles; t0 += static_cast<int64_t>(gridDim.x) * per_step) {
    const int64_t tile = t0 + st.slot;
    int64_t i = 0;  // first element of this thread's group
    bool has = false;
    if (tile < p.tiles) {
      const int64_t band = tile / p.grid_cols;
      const int64_t r = band * p.block_rows + row_in_tile;
      const int64_t c = (tile - band * p.grid_cols) * p.block_cols + kMaskGroup * byte_in_row;
      has = row_in_tile < p.block_rows && r < p.rows && c < p.cols;
      i = r * p.cols + c;
    }
    Group<T> x;
    Stats s = stats_identity();
    if (has) {
      x = load_group<T, kVector>(in + i);
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) stats_fold(s, to_float(x.v[j]), p.min_max);
    }
    const Stats total = team_reduce(s, p.log2_team, p.min_max, scratch);
    if (st.lane == 0 && tile < p.tiles) st.transforms[st.slot] = tile_transform(a, p, total, st.tensor_amax, tile);
    __syncthreads();
    if (has) {
      const BlockTransform t = st.transforms[st.slot];
      const int64_t g = i / kMaskGroup;
      const GroupRandom rnd = random_of(g, st.seed, p.stochastic);
      Group<T> y;
      uint8_t bits = 0;
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        bool in_range;
        y.v[j] = quantise(x.v[j], t, a, st.ctx, rnd.v[j], in_range);
        bits |= static_cast<uint8_t>(in_range ? 1u : 0u) << j;
      }
      store_group<T, kVector>(out + i, y);
      if (a.mask != nullptr) a.mask[g] = bits;
    }
    // transforms[] is rewritten only after the next step's team_reduce barriers, which every
    // thread reaches once done with this step.
  }
}

// ---------------------------------------------------------------------------------------
// Pass 2, one tile over the whole tensor whose rule reads the abs-max only: pass 1's abs-max
// is the tile's (its rules ignore min and max), so every thread knows the transform.

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    block_quant_whole_kernel(const T* __restrict__ in, T* __restrict__ out, BlockQuantArgs a, BlockPlan p) {
  const float tensor_amax = read_tensor_amax(a.tensor_amax, true);
  Stats s = stats_identity();
  s.bits = __float_as_uint(tensor_amax);
  const BlockTransform t = block_transform(a, stats_finish(s), tensor_amax, true);
  if (blockIdx.x == 0 && threadIdx.x == 0) store_qparams(a, 0, t);
  const ElementContext ctx = element_context(a);
  const PhiloxSeed seed = seed_of(a, p.stochastic);
  for_each_group(p.numel, [&](int64_t g, int64_t base, bool full) {
    const Group<T> x = load_group_padded<T, kVector>(in, base, full, p.numel);
    const GroupRandom rnd = random_of(g, seed, p.stochastic);
    Group<T> y;
    uint8_t bits = 0;
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) {
      bool in_range;
      y.v[j] = quantise(x.v[j], t, a, ctx, rnd.v[j], in_range);
      const bool exists = full || base + j < p.numel;  // padding of the last group: bit 0
      bits |= static_cast<uint8_t>(in_range && exists ? 1u : 0u) << j;
    }
    store_group_padded<T, kVector>(out, y, base, full, p.numel);
    if (a.mask != nullptr) a.mask[g] = bits;
  });
}

// ---------------------------------------------------------------------------------------
// Pass 2, generic. A block takes chunks of bands_per_chunk bands (the first element of a chunk
// is a multiple of 8, so chunks never share a mask byte), and a chunk in windows of `window`
// tile columns [g_lo, g_hi). A window's transform cache holds, for every band of the chunk,
// the columns [g_lo, g_hi + reach) and, unless g_lo is 0, the head columns [0, reach): every
// tile an owned mask byte can reach. Tiles are written (scale, zero point) by the window
// owning their column.

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    block_quant_generic_kernel(const T* __restrict__ in, T* __restrict__ out, BlockQuantArgs a, BlockPlan p) {
  __shared__ TeamScratch scratch;
  const TeamStart st = team_start(a, p);
  const int lanes_x = 1 << p.log2_lanes_x;
  const int lane_x = st.lane & (lanes_x - 1);
  const int lane_y = st.lane >> p.log2_lanes_x;
  const int lanes_y = st.team >> p.log2_lanes_x;
  const int per_step = kThreads >> p.log2_team;
  const int block_rows8 = static_cast<int>(min64(p.block_rows, kMaskGroup));
  const int block_cols8 = static_cast<int>(min64(p.block_cols, kMaskGroup));
  const int cols8 = static_cast<int>(min64(p.cols, kMaskGroup));
  for (int64_t chunk = blockIdx.x; chunk < p.chunks; chunk += gridDim.x) {
    const int64_t b0 = chunk * p.bands_per_chunk;
    const int64_t bands = min64(p.bands_per_chunk, p.grid_rows - b0);
    const int64_t r0 = b0 * p.block_rows;
    const int64_t r1 = min64((b0 + bands) * p.block_rows, p.rows);
    for (int64_t g_lo = 0; g_lo < p.grid_cols; g_lo += p.window) {
      const int64_t g_hi = min64(g_lo + p.window, p.grid_cols);
      // Cache slots: per band of the chunk, main_n columns from g_lo, then head_n from 0.
      const int main_n = static_cast<int>(min64(g_hi + p.reach, p.grid_cols) - g_lo);
      const int head_n = g_lo > 0 ? static_cast<int>(min64(p.reach, p.grid_cols)) : 0;
      const int per_band = main_n + head_n;
      const int window_tiles = static_cast<int>(bands) * per_band;
      const int wrap_slot = g_lo > 0 ? main_n : 0;

      // 1. The window's transforms, a team per tile.
      for (int w0 = 0; w0 < window_tiles; w0 += per_step) {
        const int w = w0 + st.slot;
        int64_t band = 0, g = 0;
        Stats s = stats_identity();
        if (w < window_tiles) {
          const int j = w / per_band;
          const int q = w - j * per_band;
          band = b0 + j;
          g = q < main_n ? g_lo + q : q - main_n;
          const int64_t tr0 = band * p.block_rows, tr1 = min64(tr0 + p.block_rows, p.rows);
          const int64_t tc0 = g * p.block_cols, tc1 = min64(tc0 + p.block_cols, p.cols);
          for (int64_t r = tr0 + lane_y; r < tr1; r += lanes_y) {
            const T* __restrict__ row = in + r * p.cols;
            for (int64_t c = tc0 + lane_x; c < tc1; c += lanes_x) stats_fold(s, to_float(row[c]), p.min_max);
          }
        }
        const Stats total = team_reduce(s, p.log2_team, p.min_max, scratch);
        if (st.lane == 0 && w < window_tiles) {
          const BlockTransform t = block_transform(a, stats_finish(total), st.tensor_amax, p.whole);
          st.transforms[w] = t;
          // The owning window writes the tile's qparams.
          if (g >= g_lo && g < g_hi) store_qparams(a, band * p.grid_cols + g, t);
        }
      }
      __syncthreads();

      // 2. The mask bytes whose first element lies in the window's columns: per row, those of
      //    [r * cols + c_lo, r * cols + c_hi), at most ceil(span / 8) of them.
      const int64_t c_lo = g_lo * p.block_cols;
      const int64_t c_hi = min64(g_hi * p.block_cols, p.cols);
      const int64_t per_row = (c_hi - c_lo + kMaskGroup - 1) / kMaskGroup;
      const int64_t slots = (r1 - r0) * per_row;
      for (int64_t k = threadIdx.x; k < slots; k += kThreads) {
        const int64_t rr = k / per_row;
        const int64_t r = r0 + rr;
        const int64_t row_start = r * p.cols;
        const int64_t first_in_row = (row_start + c_lo + kMaskGroup - 1) / kMaskGroup * kMaskGroup;
        const int64_t first = first_in_row + (k - rr * per_row) * kMaskGroup;
        if (first >= row_start + c_hi || first >= p.numel) continue;
        const int64_t g8 = first / kMaskGroup;
        const bool full = first + kMaskGroup <= p.numel;
        const Group<T> x = load_group_padded<T, kVector>(in, first, full, p.numel);
        const GroupRandom rnd = random_of(g8, st.seed, p.stochastic);
        // Walk the byte's elements by counters of at most 8 (the walk is 8 long): elements left
        // in the tile's row segment and in the row, rows left in the band. The first element's
        // tile is owned by the window; the next tiles of a row are the next cache slots, and a
        // row's end wraps to the first tile of the next row (its band's main slots when the
        // window starts at column 0, else its head slots).
        const int64_t c = first - row_start;
        const int64_t rib = rr % p.block_rows;
        int j = static_cast<int>(rr / p.block_rows);
        int at = j * per_band + static_cast<int>(c / p.block_cols - g_lo);
        int left_in_tile = static_cast<int>(min64(p.block_cols - c % p.block_cols, kMaskGroup));
        int left_in_row = static_cast<int>(min64(p.cols - c, kMaskGroup));
        int rows_left = static_cast<int>(min64(p.block_rows - rib, kMaskGroup));
        int loaded = -1;
        BlockTransform t;
        Group<T> y;
        uint8_t bits = 0;
#pragma unroll
        for (int e = 0; e < kMaskGroup; ++e) {
          if (e > 0) {
            if (--left_in_row == 0) {
              if (--rows_left == 0) ++j, rows_left = block_rows8;
              at = j * per_band + wrap_slot;
              left_in_tile = block_cols8;
              left_in_row = cols8;
            } else if (--left_in_tile == 0) {
              ++at;
              left_in_tile = block_cols8;
            }
          }
          // Past the tensor's end (the padding of its last mask byte) the walk has left the
          // chunk: keep the last transform.
          const bool exists = full || first + e < p.numel;
          if (exists && at != loaded) t = st.transforms[at], loaded = at;
          bool in_range;
          y.v[e] = quantise(x.v[e], t, a, st.ctx, rnd.v[e], in_range);
          bits |= static_cast<uint8_t>(in_range && exists ? 1u : 0u) << e;
        }
        store_group_padded<T, kVector>(out, y, first, full, p.numel);
        if (a.mask != nullptr) a.mask[g8] = bits;
      }
      // The cache is rewritten only after the next window's team_reduce barriers, which every
      // thread reaches once done here.
    }
  }
}

// ---------------------------------------------------------------------------------------
// Host side.

int log2_ceil(int64_t n) {
  int l = 0;
  while ((int64_t{1} << l) < n) ++l;
  return l;
}

enum class Path { kTiles, kWhole, kGeneric };

struct Launch {
  Path path;
  BlockPlan plan;
  unsigned int blocks;
  size_t shared_bytes;
};

Launch plan_launch(const BlockQuantArgs& a) {
  BlockPlan p;
  p.rows = a.rows;
  p.cols = a.cols;
  p.block_rows = std::min(a.block_rows, a.rows);
  p.block_cols = std::min(a.block_cols, a.cols);
  p.grid_rows = block_grid_rows(a);
  p.grid_cols = block_grid_cols(a);
  p.tiles = p.grid_rows * p.grid_cols;
  p.numel = a.rows * a.cols;
  p.whole = block_covers_tensor(a);
  p.needs_amax = block_quant_needs_tensor_amax(a);
  p.min_max = block_rule_uses_min_max(a.rule);
  p.stochastic = a.rounding == Rounding::kStochastic;
  const int64_t sms = current_sm_count();
  const int64_t max_blocks = sms * 32;
  auto blocks_for = [&](int64_t items) {
    return static_cast<unsigned int>(std::max<int64_t>(1, std::min(items, max_blocks)));
  };
  if (p.whole && !p.min_max) return {Path::kWhole, p, blocks_for(mask_bytes(p.numel) / kThreads + 1), 0};
  const bool aligned = p.cols % kMaskGroup == 0 && p.block_cols % kMaskGroup == 0;
  const int64_t tile_groups = p.block_rows * (p.block_cols / kMaskGroup);
  if (aligned && tile_groups <= kThreads) {
    p.row_bytes = static_cast<int>(p.block_cols / kMaskGroup);
    p.log2_team = log2_ceil(tile_groups);
    const int64_t per_step = kThreads >> p.log2_team;
    return {Path::kTiles, p, blocks_for((p.tiles + per_step - 1) / per_step),
            static_cast<size_t>(per_step) * sizeof(BlockTransform)};
  }
  // Generic: a team of up to kThreads threads per tile (about 8 elements a thread), its lanes
  // along the tile's rows first.
  const int64_t tile_elements = p.block_rows * p.block_cols;
  p.log2_team = std::min(log2_ceil((tile_elements + kMaskGroup - 1) / kMaskGroup), 8);
  p.log2_lanes_x = std::min(log2_ceil(p.block_cols), p.log2_team);
  p.bands_per_chunk = block_bands_per_chunk(a);
  p.chunks = (p.grid_rows + p.bands_per_chunk - 1) / p.bands_per_chunk;
  const int64_t bands = std::min(p.bands_per_chunk, p.grid_rows);
  if (bands * p.grid_cols <= kCacheTiles) {
    p.window = p.grid_cols;  // one window: every tile of a chunk at once
    p.reach = 0;
  } else {
    // Mask bytes straddle tiles (and rows) unless every tile row segment starts on one.
    p.reach = aligned ? 0 : kReach;
    p.window = kCacheTiles / bands - 2 * p.reach;  // >= 96 - 16: at least kReach
  }
  const int64_t per_band = std::min(p.grid_cols, p.window + 2 * p.reach);
  const size_t shared = static_cast<size_t>(bands * per_band) * sizeof(BlockTransform);
  return {Path::kGeneric, p, blocks_for(p.chunks), shared};
}

template <typename T, bool kVector>
void launch_pass2(const Launch& l, const BlockQuantArgs& a, cudaStream_t stream) {
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.output);
  switch (l.path) {
    case Path::kTiles:
      block_quant_tiles_kernel<T, kVector><<<l.blocks, kThreads, l.shared_bytes, stream>>>(in, out, a, l.plan);
      break;
    case Path::kWhole:
      block_quant_whole_kernel<T, kVector><<<l.blocks, kThreads, 0, stream>>>(in, out, a, l.plan);
      break;
    case Path::kGeneric:
      block_quant_generic_kernel<T, kVector><<<l.blocks, kThreads, l.shared_bytes, stream>>>(in, out, a, l.plan);
      break;
  }
}

template <typename T>
cudaError_t launch_typed(const BlockQuantArgs& a, cudaStream_t stream) {
  const Launch l = plan_launch(a);
  const T* in = static_cast<const T*>(a.input);
  const bool vector_in = is_aligned16(in);
  if (l.plan.needs_amax) {
    cudaError_t err = cudaMemsetAsync(a.tensor_amax, 0, sizeof(float), stream);
    if (err != cudaSuccess) return err;
    const LaunchShape shape = grid_for(mask_bytes(l.plan.numel));
    uint32_t* bits = reinterpret_cast<uint32_t*>(a.tensor_amax);
    if (vector_in) {
      block_tensor_abs_max_kernel<T, true><<<shape.blocks, kThreads, 0, stream>>>(in, l.plan.numel, bits);
    } else {
      block_tensor_abs_max_kernel<T, false><<<shape.blocks, kThreads, 0, stream>>>(in, l.plan.numel, bits);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (vector_in && is_aligned16(a.output)) {
    launch_pass2<T, true>(l, a, stream);
  } else {
    launch_pass2<T, false>(l, a, stream);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_block_quant(const BlockQuantArgs& args, cudaStream_t stream) {
  if (!check_block_quant_args(args).empty()) return cudaErrorInvalidValue;
  if (args.rounding != Rounding::kHalfEven && args.rounding != Rounding::kHalfAway &&
      args.rounding != Rounding::kStochastic) {
    return cudaErrorInvalidValue;
  }
  if (args.dtype != DType::kFloat32 && args.dtype != DType::kFloat16 && args.dtype != DType::kBFloat16) {
    return cudaErrorInvalidValue;
  }
  if (args.rows == 0 || args.cols == 0) return cudaSuccess;
  return dispatch_dtype(args.dtype, cudaErrorInvalidValue,
                        [&](auto t) { return launch_typed<typename decltype(t)::type>(args, stream); });
}

}  // namespace cuda
}  // namespace fakequant
