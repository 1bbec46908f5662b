// The CUDA emulation runtime: what the prelude, the cub::BlockReduce stand-in and the
// rewritten launches call. Everything runs on one OS thread; every GPU thread of a block is
// a fiber and blocks run one after another (docs/cuda-emulation.md).
#pragma once

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fqemu {

// The built-in variables of the running GPU thread (threadIdx and friends read these).
extern uint3 g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  LaunchConfig(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), shared_bytes(s), stream(st) {}
};

// Runs body(ctx) once per GPU thread of the grid (checking the launch limits first; an
// invalid launch runs nothing and records cudaErrorInvalidConfiguration / InvalidValue).
void launch_erased(const LaunchConfig& cfg, void (*body)(void*), void* ctx);

// `kernel<<<cfg>>>(args...)` is rewritten to launch(cfg, [&](auto&&... a) { kernel(a...); },
// args...): the arguments are evaluated once, copied (kernel parameters are by value), and
// every thread calls the kernel on its own copies.
template <typename Call, typename... Args>
void launch(const LaunchConfig& cfg, Call&& call, Args&&... args) {
  std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
  auto body = [&]() { std::apply([&](auto&... p) { call(p...); }, params); };
  using Body = decltype(body);
  launch_erased(cfg, [](void* b) { (*static_cast<Body*>(b))(); }, &body);
}

// The first statement of a kernel declared with __launch_bounds__(max_threads): a block of
// more threads is a launch a GPU refuses (aborts here).
void check_launch_bounds(unsigned max_threads);

// __syncthreads(): every thread of the block must arrive at the same barrier.
void syncthreads(const char* file, int line);

// The 32 (or fewer, in a partial last warp) threads of the calling thread's warp wait for
// each other; what warp-synchronous CUDA code (shuffles) implies. Used by the stand-ins.
void warp_sync();

// Linear index of the calling thread in its block, and the block's thread count.
unsigned linear_thread_index();
unsigned block_threads();

// Per-warp scratch of 32 lanes x `lane_bytes` for the calling thread's warp, valid for the
// running block: the stand-ins exchange values through it where CUDA would shuffle.
void* warp_scratch(size_t lane_bytes);

// Static shared memory: one allocation per declaration site and block, exact size (so
// AddressSanitizer sees overruns), filled with garbage at the start of each block.
struct SharedSite {
  uint64_t block_serial = 0;
  void* ptr = nullptr;
};
void* shared_storage(SharedSite& site, size_t bytes, size_t align);
template <typename T>
T& shared(SharedSite& site) {
  return *static_cast<T*>(shared_storage(site, sizeof(T), alignof(T)));
}

// The block's dynamic shared memory (the launch's byte count, exact size, garbage-filled).
void* dynamic_shared();

// Fills `bytes` at `p` with the harness' garbage (a seeded byte stream).
void fill_garbage(void* p, size_t bytes);

// The order threads and blocks run in (FAKEQUANT_EMU_ORDER at start-up; tests of the
// harness itself switch it).
enum class Order { kForward, kReversed, kShuffled };
Order order();
void set_order(Order order);

// Reports a misuse of CUDA the harness detected and aborts the process.
[[noreturn]] void fail(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace fqemu
