// Stand-in for cub::BlockReduce in the emulated CUDA build (tests/emu). It keeps CUB's
// contract, so that kernels which break it fail here as they would on a GPU:
//   - every thread of the block calls Reduce / Sum, and the block has exactly the
//     BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z threads of the template arguments;
//   - the result is valid in thread 0 only (the other threads get garbage);
//   - there is no barrier after the call: the TempStorage must not be reused before a
//     __syncthreads().
// It combines in CUB's order for the default algorithm (BLOCK_REDUCE_WARP_REDUCTIONS): in
// each warp of 32 threads a shuffle-down tree (lane i takes op(own, lane i + d) for
// d = 1, 2, 4, 8, 16, where lane i + d exists), lane 0 of each warp stores the warp's
// aggregate in the TempStorage, a barrier, then thread 0 folds the warp aggregates left to
// right. Floating-point sums therefore round as CUB's do.
#pragma once

#include <cstring>
#include <type_traits>

#include "fqemu.h"

namespace cub {

enum BlockReduceAlgorithm {
  BLOCK_REDUCE_RAKING_COMMUTATIVE_ONLY,
  BLOCK_REDUCE_RAKING,
  BLOCK_REDUCE_WARP_REDUCTIONS,
};

struct Sum {
  template <typename T, typename U>
  auto operator()(const T& a, const U& b) const {
    return a + b;
  }
};

struct Max {
  template <typename T>
  T operator()(const T& a, const T& b) const {
    return a < b ? b : a;
  }
};

struct Min {
  template <typename T>
  T operator()(const T& a, const T& b) const {
    return b < a ? b : a;
  }
};

template <typename T, int BLOCK_DIM_X, BlockReduceAlgorithm ALGORITHM = BLOCK_REDUCE_WARP_REDUCTIONS,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1, int LEGACY_PTX_ARCH = 0>
class BlockReduce {
  static_assert(ALGORITHM == BLOCK_REDUCE_WARP_REDUCTIONS,
                "the emulated cub::BlockReduce implements the default algorithm only");
  static_assert(std::is_trivially_copyable<T>::value, "BlockReduce of a trivially copyable type");
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;
  static constexpr int kWarpThreads = 32;
  static constexpr int kWarps = (kThreads + kWarpThreads - 1) / kWarpThreads;

 public:
  struct TempStorage {
    T warp_aggregates[kWarps];
  };

  explicit BlockReduce(TempStorage& storage) : storage_(storage) {
    if (static_cast<int>(::fqemu::block_threads()) != kThreads) {
      ::fqemu::fail("cub::BlockReduce<..., %d threads> used in a block of %u threads", kThreads,
                    ::fqemu::block_threads());
    }
  }

  template <typename ReductionOp>
  T Reduce(T input, ReductionOp op) {
    return Reduce(input, op, kThreads);
  }

  // The first num_valid threads' inputs (CUB's partial-tile overload).
  template <typename ReductionOp>
  T Reduce(T input, ReductionOp op, int num_valid) {
    const int tid = static_cast<int>(::fqemu::linear_thread_index());
    const int lane = tid % kWarpThreads;
    const int warp = tid / kWarpThreads;
    const int warp_first = warp * kWarpThreads;
    const int lanes = num_valid - warp_first < kWarpThreads ? num_valid - warp_first : kWarpThreads;
    // The shuffles: each lane publishes its value to its warp, the warp steps together.
    T* exchange = static_cast<T*>(::fqemu::warp_scratch(sizeof(T)));
    exchange[lane] = input;
    ::fqemu::warp_sync();
    if (lane == 0 && lanes > 0) {
      // In place, lanes in ascending order: lane i + d still holds its value from before
      // this step when lane i reads it, as a shuffle would deliver it.
      for (int d = 1; d < kWarpThreads; d *= 2) {
        for (int i = 0; i + d < lanes; ++i) exchange[i] = static_cast<T>(op(exchange[i], exchange[i + d]));
      }
      storage_.warp_aggregates[warp] = exchange[0];
    }
    ::fqemu::syncthreads("cub::BlockReduce (emulated)", 0);
    T result;
    if (tid == 0) {
      result = storage_.warp_aggregates[0];
      const int valid_warps = (num_valid + kWarpThreads - 1) / kWarpThreads;
      for (int w = 1; w < valid_warps; ++w) result = static_cast<T>(op(result, storage_.warp_aggregates[w]));
    } else {
      ::fqemu::fill_garbage(&result, sizeof(result));  // valid in thread 0 only
    }
    return result;
  }

  T Sum(T input) { return Reduce(input, cub::Sum()); }

 private:
  TempStorage& storage_;
};

}  // namespace cub
