// The CUDA emulation runtime (docs/cuda-emulation.md): the CUDA runtime calls the kernels and
// tests make, and the execution of a launch.
//
// Every GPU thread of a block is a fiber with its own stack; a block's fibers run one at a
// time on the calling OS thread, each until it finishes or waits (__syncthreads, a warp-
// synchronous step), in forward, reversed or shuffled order. Blocks run one after another in
// the same orders. Device memory is host memory of the exact requested size, recorded so
// that copies can be checked against their direction; device and shared memory start filled
// with garbage so that reads of unwritten memory show.
#include <cuda_runtime_api.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "fqemu.h"

// FQEMU_ASAN: the program runs under AddressSanitizer (the build defines it; this file itself
// is compiled without instrumentation), so fiber switches are announced to it.
#if !defined(FQEMU_ASAN) && defined(__SANITIZE_ADDRESS__)
#define FQEMU_ASAN 1
#endif
#if defined(FQEMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA emulation runtime switches fibers with x86-64 code"
#endif

// Saves the callee-saved registers, the SSE control word and the x87 control word on the
// current stack, stores the stack pointer in *save_sp, and resumes the context at load_sp.
extern "C" void fqemu_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .globl fqemu_switch
  .type fqemu_switch, @function
fqemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fqemu_switch, .-fqemu_switch
  .popsection
)");

namespace fqemu {

uint3 g_thread_idx;
uint3 g_block_idx;
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

// --- configuration (environment, read once) ----------------------------------------------

struct Config {
  Order order = Order::kForward;
  uint64_t seed = 0x5EEDu;
  int sm_count = 16;
};

Config& config() {
  static Config c = [] {
    Config c;
    if (const char* o = std::getenv("FAKEQUANT_EMU_ORDER")) {
      const std::string s(o);
      if (s == "forward") {
        c.order = Order::kForward;
      } else if (s == "reversed") {
        c.order = Order::kReversed;
      } else if (s == "shuffled") {
        c.order = Order::kShuffled;
      } else {
        fail("FAKEQUANT_EMU_ORDER must be 'forward', 'reversed' or 'shuffled', got '%s'", o);
      }
    }
    if (const char* s = std::getenv("FAKEQUANT_EMU_SEED")) c.seed = std::strtoull(s, nullptr, 0);
    if (const char* s = std::getenv("FAKEQUANT_EMU_SM_COUNT")) {
      c.sm_count = std::atoi(s);
      if (c.sm_count < 1 || c.sm_count > 1024) fail("FAKEQUANT_EMU_SM_COUNT must be in [1, 1024], got '%s'", s);
    }
    return c;
  }();
  return c;
}

std::mt19937_64& order_rng() {
  static std::mt19937_64 rng(config().seed);
  return rng;
}

// The visiting order of n items: threads of a block (group = 32, a warp: shuffled order
// takes the warps in a random order and the lanes of each in a random order, as warps are
// what a GPU schedules) or blocks of a grid (group = 1).
void make_order(std::vector<unsigned>& order, unsigned n, unsigned group) {
  order.resize(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  switch (config().order) {
    case Order::kForward:
      break;
    case Order::kReversed:
      std::reverse(order.begin(), order.end());
      break;
    case Order::kShuffled: {
      const unsigned groups = (n + group - 1) / group;
      std::vector<unsigned> g(groups);
      for (unsigned i = 0; i < groups; ++i) g[i] = i;
      std::shuffle(g.begin(), g.end(), order_rng());
      unsigned k = 0;
      for (unsigned gi : g) {
        const unsigned first = k;
        for (unsigned i = gi * group; i < std::min(n, gi * group + group); ++i) order[k++] = i;
        std::shuffle(order.begin() + first, order.begin() + k, order_rng());
      }
      break;
    }
  }
}

// --- limits of a launch (compute capability 8.x / 9.x, no opt-in shared memory) ---------

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimXY = 1024;
constexpr unsigned kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimX = 0x7FFFFFFFu;
constexpr unsigned kMaxGridDimYZ = 65535;
constexpr size_t kMaxSharedPerBlock = 48 * 1024;
constexpr unsigned kWarpSize = 32;

// --- garbage -----------------------------------------------------------------------------

uint64_t g_garbage_state = 0x9E3779B97F4A7C15ull;

// --- device memory -----------------------------------------------------------------------

std::map<uintptr_t, size_t>& allocations() {
  static std::map<uintptr_t, size_t> m;
  return m;
}

// The allocation holding [p, p + n), or end() when the range is not inside one.
std::map<uintptr_t, size_t>::const_iterator device_range(const void* p, size_t n) {
  const auto& m = allocations();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return m.end();
  --it;
  if (a - it->first > it->second || n > it->second - (a - it->first)) return m.end();
  return it;
}

bool overlaps_device(const void* p, size_t n) {
  const auto& m = allocations();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a + (n > 0 ? n - 1 : 0));
  if (it == m.begin()) return false;
  --it;
  return a < it->first + std::max<size_t>(it->second, 1);
}

cudaError_t g_last_error = cudaSuccess;

cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

// One line on stderr: "[cuda-emu] ", the prefix, the formatted message.
void report(const char* prefix, const char* format, va_list ap) {
  std::fprintf(stderr, "[cuda-emu] %s", prefix);
  std::vfprintf(stderr, format, ap);
  std::fprintf(stderr, "\n");
}

cudaError_t refuse(cudaError_t e, const char* format, ...) __attribute__((format(printf, 2, 3)));
cudaError_t refuse(cudaError_t e, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  report("", format, ap);
  va_end(ap);
  return record(e);
}

// --- fibers ------------------------------------------------------------------------------

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;

enum class State { kReady, kBarrier, kWarp, kDone };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // lowest usable address; a guard page lies below
  uint3 idx{};
  State state = State::kDone;
  const char* file = nullptr;  // the barrier it waits at
  int line = 0;
  void* fake_stack = nullptr;
};

std::vector<Fiber> g_fibers;
Fiber* g_current = nullptr;
void* g_scheduler_sp = nullptr;
const void* g_scheduler_stack_bottom = nullptr;
size_t g_scheduler_stack_size = 0;
void (*g_body)(void*) = nullptr;
void* g_body_ctx = nullptr;

// Per block: the running block's serial number, its shared allocations, warp scratch.
uint64_t g_block_serial = 0;
std::vector<void*> g_block_shared;
size_t g_block_shared_bytes = 0;
size_t g_dynamic_shared_bytes = 0;
void* g_dynamic_shared = nullptr;
uint64_t g_dynamic_serial = 0;
std::vector<unsigned char> g_warp_scratch;
constexpr size_t kMaxScratchLaneBytes = 128;

void ensure_fibers(unsigned n) {
  while (g_fibers.size() < n) {
    void* region = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (region == MAP_FAILED) fail("cannot map a fiber stack");
    mprotect(region, kGuardBytes, PROT_NONE);  // a stack overflow faults instead of corrupting
    Fiber f;
    f.stack = static_cast<char*>(region) + kGuardBytes;
    g_fibers.push_back(f);
  }
}

void finish_switch_into_fiber(Fiber* f) {
#if defined(FQEMU_ASAN)
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
#else
  (void)f;
#endif
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield_to_scheduler(bool finished) {
  Fiber* f = g_current;
#if defined(FQEMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f->fake_stack, g_scheduler_stack_bottom,
                                 g_scheduler_stack_size);
#else
  (void)finished;
#endif
  fqemu_switch(&f->sp, g_scheduler_sp);
  finish_switch_into_fiber(f);
}

// Entry of every fiber (its stack holds no instrumented frame of its own, so a reused stack
// carries no stale AddressSanitizer state).
__attribute__((no_sanitize_address, noinline, noreturn)) void fiber_entry() {
  finish_switch_into_fiber(g_current);
  g_body(g_body_ctx);
  g_current->state = State::kDone;
  yield_to_scheduler(true);
  __builtin_trap();  // a finished fiber is never resumed
}

void start_fiber(Fiber& f) {
  uint64_t* sp = reinterpret_cast<uint64_t*>(f.stack + kStackBytes);
  *--sp = 0;                                          // return address of fiber_entry (never used)
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);  // where fqemu_switch's `ret` goes
  for (int i = 0; i < 6; ++i) *--sp = 0;              // rbp rbx r12 r13 r14 r15
  --sp;
  uint32_t mxcsr = 0;
  uint16_t fpu_cw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_cw));
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpu_cw, 2);
  f.sp = sp;
  f.state = State::kReady;
  f.fake_stack = nullptr;
}

void resume(Fiber& f) {
  g_current = &f;
  g_thread_idx = f.idx;
#if defined(FQEMU_ASAN)
  void* scheduler_fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&scheduler_fake_stack, f.stack, kStackBytes);
#endif
  fqemu_switch(&g_scheduler_sp, f.sp);
#if defined(FQEMU_ASAN)
  __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
  g_current = nullptr;
}

Fiber& running_fiber(const char* what) {
  if (g_current == nullptr) fail("%s called outside a kernel", what);
  return *g_current;
}

void release_block_shared() {
  for (void* p : g_block_shared) std::free(p);
  g_block_shared.clear();
  g_block_shared_bytes = 0;
  if (g_dynamic_shared != nullptr) std::free(g_dynamic_shared);
  g_dynamic_shared = nullptr;
}

const char* site(const Fiber& f) { return f.file != nullptr ? f.file : "?"; }

// Whether every lane of t's warp waits at a warp step; if so, marks them ready.
bool release_warp_of(unsigned t, unsigned n) {
  const unsigned w0 = t / kWarpSize * kWarpSize, w1 = std::min(n, w0 + kWarpSize);
  for (unsigned u = w0; u < w1; ++u) {
    if (g_fibers[u].state != State::kWarp) return false;
  }
  for (unsigned u = w0; u < w1; ++u) g_fibers[u].state = State::kReady;
  return true;
}

// Runs the n threads of the current block to completion. A pass resumes every ready thread
// in the block's order; a warp whose last lane reaches a warp step goes on at once (its lanes
// in the same order) before the pass continues, as warps progress independently on a GPU.
// When nobody is ready, the block's barrier is released if every thread waits at it.
void run_block(unsigned n) {
  const dim3 bd = g_block_dim;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = g_fibers[t];
    f.idx = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
    start_fiber(f);
  }
  std::vector<unsigned> order, position(n), pending;
  for (;;) {
    make_order(order, n, kWarpSize);
    for (unsigned i = 0; i < n; ++i) position[order[i]] = i;
    for (unsigned t : order) {
      pending.assign(1, t);
      while (!pending.empty()) {
        const unsigned u = pending.back();
        pending.pop_back();
        if (g_fibers[u].state != State::kReady) continue;
        resume(g_fibers[u]);
        if (g_fibers[u].state == State::kWarp && release_warp_of(u, n)) {
          const unsigned w0 = u / kWarpSize * kWarpSize, w1 = std::min(n, w0 + kWarpSize);
          const size_t first = pending.size();
          for (unsigned v = w0; v < w1; ++v) pending.push_back(v);
          // pending is a stack: the lane to run first goes last.
          std::sort(pending.begin() + static_cast<std::ptrdiff_t>(first), pending.end(),
                    [&](unsigned a, unsigned b) { return position[a] > position[b]; });
        }
      }
    }
    unsigned done = 0, barrier = 0, warp = 0;
    const Fiber* at_barrier = nullptr;
    for (unsigned t = 0; t < n; ++t) {
      const Fiber& f = g_fibers[t];
      if (f.state == State::kDone) ++done;
      if (f.state == State::kWarp) ++warp;
      if (f.state == State::kBarrier) {
        ++barrier;
        if (at_barrier == nullptr) at_barrier = &f;
        if (f.file != at_barrier->file || f.line != at_barrier->line) {
          fail("block (%u,%u,%u): threads wait at different __syncthreads: thread (%u,%u,%u) at %s:%d, thread "
               "(%u,%u,%u) at %s:%d",
               g_block_idx.x, g_block_idx.y, g_block_idx.z, at_barrier->idx.x, at_barrier->idx.y, at_barrier->idx.z,
               site(*at_barrier), at_barrier->line, f.idx.x, f.idx.y, f.idx.z, site(f), f.line);
        }
      }
    }
    if (done == n) return;
    if (barrier == n) {
      for (unsigned t = 0; t < n; ++t) g_fibers[t].state = State::kReady;
      continue;
    }
    if (barrier > 0) {
      fail("block (%u,%u,%u): __syncthreads at %s:%d reached by %u of %u threads (%u finished, %u in a warp step)",
           g_block_idx.x, g_block_idx.y, g_block_idx.z, site(*at_barrier), at_barrier->line, barrier, n, done, warp);
    }
    fail("block (%u,%u,%u): a warp-synchronous step was reached by only part of a warp (%u threads waiting, %u "
         "finished)",
         g_block_idx.x, g_block_idx.y, g_block_idx.z, warp, done);
  }
}

}  // namespace

// --- the runtime interface (fqemu.h) -----------------------------------------------------

void fail(const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  report("error: ", format, ap);
  va_end(ap);
  std::fflush(stderr);
  std::abort();
}

Order order() { return config().order; }
void set_order(Order o) { config().order = o; }

void fill_garbage(void* p, size_t bytes) {
  unsigned char* b = static_cast<unsigned char*>(p);
  uint64_t s = g_garbage_state ^ config().seed;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    std::memcpy(b + i, &s, 8);
  }
  for (; i < bytes; ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    b[i] = static_cast<unsigned char>(s);
  }
  g_garbage_state = s;
}

void launch_erased(const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  if (g_current != nullptr) fail("a kernel launch from inside a kernel");
  const dim3 b = cfg.block, g = cfg.grid;
  const uint64_t threads = uint64_t{b.x} * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > kMaxBlockDimXY || b.y > kMaxBlockDimXY || b.z > kMaxBlockDimZ ||
      threads > kMaxThreadsPerBlock) {
    refuse(cudaErrorInvalidConfiguration, "launch refused: block (%u,%u,%u) is outside the limits", b.x, b.y, b.z);
    return;
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > kMaxGridDimX || g.y > kMaxGridDimYZ || g.z > kMaxGridDimYZ) {
    refuse(cudaErrorInvalidConfiguration, "launch refused: grid (%u,%u,%u) is outside the limits", g.x, g.y, g.z);
    return;
  }
  if (cfg.shared_bytes > kMaxSharedPerBlock) {
    refuse(cudaErrorInvalidValue, "launch refused: %zu bytes of dynamic shared memory (at most %zu without opt-in)",
           cfg.shared_bytes, kMaxSharedPerBlock);
    return;
  }
  const unsigned n = static_cast<unsigned>(threads);
  ensure_fibers(n);
  g_body = body;
  g_body_ctx = ctx;
  g_block_dim = b;
  g_grid_dim = g;
  g_dynamic_shared_bytes = cfg.shared_bytes;
  const uint64_t blocks = uint64_t{g.x} * g.y * g.z;
  if (blocks > (1ull << 32)) fail("grid of %llu blocks is too large to emulate", static_cast<unsigned long long>(blocks));
  std::vector<unsigned> order;
  make_order(order, static_cast<unsigned>(blocks), 1);
  for (unsigned lin : order) {
    g_block_idx = uint3{lin % g.x, (lin / g.x) % g.y, static_cast<unsigned>(lin / (uint64_t{g.x} * g.y))};
    ++g_block_serial;
    run_block(n);
    release_block_shared();
  }
  g_body = nullptr;
  g_body_ctx = nullptr;
}

void check_launch_bounds(unsigned max_threads) {
  if (block_threads() > max_threads) {
    fail("a kernel declared with __launch_bounds__(%u) was launched with blocks of %u threads (a GPU refuses "
         "the launch)",
         max_threads, block_threads());
  }
}

void syncthreads(const char* file, int line) {
  Fiber& f = running_fiber("__syncthreads");
  f.state = State::kBarrier;
  f.file = file;
  f.line = line;
  yield_to_scheduler(false);
}

void warp_sync() {
  Fiber& f = running_fiber("a warp-synchronous step");
  f.state = State::kWarp;
  yield_to_scheduler(false);
}

unsigned linear_thread_index() {
  const uint3 t = running_fiber("threadIdx").idx;
  return t.x + g_block_dim.x * (t.y + g_block_dim.y * t.z);
}

unsigned block_threads() { return g_block_dim.x * g_block_dim.y * g_block_dim.z; }

void* warp_scratch(size_t lane_bytes) {
  if (lane_bytes > kMaxScratchLaneBytes) fail("warp exchange of %zu-byte values is not supported", lane_bytes);
  const size_t per_warp = kWarpSize * kMaxScratchLaneBytes;
  const size_t warps = (block_threads() + kWarpSize - 1) / kWarpSize;
  if (g_warp_scratch.size() < warps * per_warp) g_warp_scratch.resize(warps * per_warp);
  return g_warp_scratch.data() + (linear_thread_index() / kWarpSize) * per_warp;
}

void* shared_storage(SharedSite& s, size_t bytes, size_t align) {
  running_fiber("__shared__ storage");
  if (s.block_serial != g_block_serial) {
    g_block_shared_bytes += bytes;
    if (g_block_shared_bytes + g_dynamic_shared_bytes > kMaxSharedPerBlock) {
      fail("block uses %zu bytes of static and %zu bytes of dynamic shared memory (at most %zu)", g_block_shared_bytes,
           g_dynamic_shared_bytes, kMaxSharedPerBlock);
    }
    void* p = nullptr;
    if (posix_memalign(&p, std::max<size_t>(align, sizeof(void*)), std::max<size_t>(bytes, 1)) != 0) {
      fail("out of memory for shared memory");
    }
    fill_garbage(p, bytes);
    g_block_shared.push_back(p);
    s.ptr = p;
    s.block_serial = g_block_serial;
  }
  return s.ptr;
}

void* dynamic_shared() {
  running_fiber("extern __shared__ memory");
  if (g_dynamic_serial != g_block_serial || g_dynamic_shared == nullptr) {
    if (posix_memalign(&g_dynamic_shared, 16, g_dynamic_shared_bytes) != 0) fail("out of memory for shared memory");
    fill_garbage(g_dynamic_shared, g_dynamic_shared_bytes);
    g_dynamic_serial = g_block_serial;
  }
  return g_dynamic_shared;
}

}  // namespace fqemu

// --- the CUDA runtime API subset ----------------------------------------------------------

using fqemu::allocations;
using fqemu::device_range;
using fqemu::overlaps_device;
using fqemu::record;
using fqemu::refuse;

extern "C" {

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return record(cudaErrorInvalidValue);
  void* p = nullptr;
  // 256-byte aligned like the CUDA allocator; exactly `size` bytes so that AddressSanitizer's
  // red zone starts where the buffer ends.
  if (posix_memalign(&p, 256, size) != 0) return record(cudaErrorMemoryAllocation);
  fqemu::fill_garbage(p, size);
  allocations()[reinterpret_cast<uintptr_t>(p)] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  auto& m = allocations();
  auto it = m.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == m.end()) return refuse(cudaErrorInvalidValue, "cudaFree of %p, which cudaMalloc did not return", ptr);
  m.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

static cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  const bool dst_dev = device_range(dst, count) != allocations().end();
  const bool src_dev = device_range(src, count) != allocations().end();
  const bool dst_touch = overlaps_device(dst, count);
  const bool src_touch = overlaps_device(src, count);
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = dst_dev && !src_touch;
      break;
    case cudaMemcpyDeviceToHost:
      ok = src_dev && !dst_touch;
      break;
    case cudaMemcpyDeviceToDevice:
      ok = src_dev && dst_dev;
      break;
    case cudaMemcpyHostToHost:
      ok = !src_touch && !dst_touch;
      break;
    case cudaMemcpyDefault:
      ok = (dst_dev || !dst_touch) && (src_dev || !src_touch);
      break;
  }
  if (!ok) {
    return refuse(cudaErrorInvalidValue,
                  "cudaMemcpy of %zu bytes from %p (%s) to %p (%s) does not match its direction (kind %d)", count, src,
                  src_dev ? "device" : (src_touch ? "crossing a device buffer's end" : "host"), dst,
                  dst_dev ? "device" : (dst_touch ? "crossing a device buffer's end" : "host"), static_cast<int>(kind));
  }
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return copy(dst, src, count, kind);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t) {
  return copy(dst, src, count, kind);
}

static cudaError_t set(void* dst, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (device_range(dst, count) == allocations().end()) {
    return refuse(cudaErrorInvalidValue, "cudaMemset of %zu bytes at %p, outside any device buffer", count, dst);
  }
  std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t count) { return set(dst, value, count); }

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t) { return set(dst, value, count); }

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = fqemu::g_last_error;
  fqemu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return fqemu::g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    default:
      return "cudaError (other)";
  }
}

const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return record(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return record(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : record(cudaErrorInvalidDevice); }

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return record(cudaErrorInvalidValue);
  if (device != 0) return record(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = fqemu::config().sm_count;
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = static_cast<int>(fqemu::kMaxThreadsPerBlock);
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(fqemu::kMaxSharedPerBlock);
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = static_cast<int>(fqemu::kWarpSize);
      return cudaSuccess;
    default:
      return refuse(cudaErrorInvalidValue, "cudaDeviceGetAttribute(%d) is not emulated", static_cast<int>(attr));
  }
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

}  // extern "C"
