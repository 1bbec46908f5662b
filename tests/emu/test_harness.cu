// Tests of the CUDA emulation harness itself (docs/cuda-emulation.md): planted bugs it must
// catch, CUDA limits it must enforce, and the cub::BlockReduce stand-in's contract. Written
// as plain CUDA; built only for the emulated run (tests/emu/CMakeLists.txt).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cub/block/block_reduce.cuh>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess)

template <typename T>
T* device_copy(const std::vector<T>& v) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, v.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}

template <typename T>
std::vector<T> host_copy(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

// Runs `f` once in each order and restores the order the process started with.
template <typename F>
void in_order(fqemu::Order o, F f) {
  const fqemu::Order saved = fqemu::order();
  fqemu::set_order(o);
  f();
  fqemu::set_order(saved);
}

// --- planted bug 1: a tail loop that runs one element past the end ------------------------

__global__ void scale_kernel(const float* in, float* out, int64_t n, bool off_by_one) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t end = off_by_one ? n + 1 : n;  // the planted bug: `i <= n`
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < end; i += stride) {
    out[i] = 2.0f * in[i];
  }
}

void run_scale(int64_t n, bool off_by_one) {
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i) - 7.5f;
  float* dx = device_copy(x);
  float* dy = nullptr;
  ASSERT_CUDA(cudaMalloc(&dy, n * sizeof(float)));
  scale_kernel<<<3, 64>>>(dx, dy, n, off_by_one);
  ASSERT_CUDA(cudaGetLastError());
  const std::vector<float> y = host_copy(dy, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], 2.0f * x[i]) << i;
  cudaFree(dx);
  cudaFree(dy);
}

TEST(PlantedBugs, CorrectTailRuns) { run_scale(1001, false); }

TEST(PlantedBugs, OutOfBoundsTailIsAHeapBufferOverflow) {
  // The device buffers are exactly n floats: AddressSanitizer reports the read past the end.
  EXPECT_DEATH(run_scale(1001, true), "heap-buffer-overflow");
}

// --- planted bug 2: a missing barrier between shared-memory writes and reads --------------

__global__ void rotate_kernel(const int* in, int* out, bool barrier) {
  __shared__ int s[128];
  const int t = threadIdx.x;
  s[t] = in[t];
  if (barrier) __syncthreads();
  out[t] = s[(t + 1) % blockDim.x];
}

std::vector<int> run_rotate(bool barrier) {
  std::vector<int> x(128);
  for (int i = 0; i < 128; ++i) x[i] = 1000 + i;
  int* dx = device_copy(x);
  int* dy = nullptr;
  EXPECT_EQ(cudaMalloc(&dy, 128 * sizeof(int)), cudaSuccess);
  rotate_kernel<<<1, 128>>>(dx, dy, barrier);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int> y = host_copy(dy, 128);
  cudaFree(dx);
  cudaFree(dy);
  return y;
}

std::vector<int> rotated() {
  std::vector<int> want(128);
  for (int i = 0; i < 128; ++i) want[i] = 1000 + (i + 1) % 128;
  return want;
}

TEST(PlantedBugs, MissingBarrierBeforeSharedReadIsCaughtInEveryOrder) {
  for (const fqemu::Order o : {fqemu::Order::kForward, fqemu::Order::kReversed, fqemu::Order::kShuffled}) {
    in_order(o, [&] {
      EXPECT_EQ(run_rotate(true), rotated()) << "with the barrier, order " << static_cast<int>(o);
      EXPECT_NE(run_rotate(false), rotated()) << "without the barrier, order " << static_cast<int>(o);
    });
  }
}

// --- planted bug 3: BlockReduce temp storage reused without a barrier ----------------------

constexpr int kReduceThreads = 256;

// Sums of `rounds` rows of 256 values, one BlockReduce per row on one TempStorage. CUB has
// no barrier after Reduce: reusing the storage needs a __syncthreads first.
__global__ void row_sums_kernel(const int* in, int* out, int rounds, bool barrier) {
  using BlockReduce = cub::BlockReduce<int, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  for (int r = 0; r < rounds; ++r) {
    const int total = BlockReduce(temp).Sum(in[r * kReduceThreads + threadIdx.x]);
    if (threadIdx.x == 0) out[r] = total;
    if (barrier) __syncthreads();
  }
}

std::vector<int> run_row_sums(bool barrier, std::vector<int>* want) {
  const int rounds = 4;
  std::vector<int> x(rounds * kReduceThreads);
  want->assign(rounds, 0);
  for (int i = 0; i < rounds * kReduceThreads; ++i) {
    x[i] = (i * 37) % 101 - 50;
    (*want)[i / kReduceThreads] += x[i];
  }
  int* dx = device_copy(x);
  int* dy = nullptr;
  EXPECT_EQ(cudaMalloc(&dy, rounds * sizeof(int)), cudaSuccess);
  row_sums_kernel<<<1, kReduceThreads>>>(dx, dy, rounds, barrier);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<int> y = host_copy(dy, rounds);
  cudaFree(dx);
  cudaFree(dy);
  return y;
}

TEST(PlantedBugs, ReusedReduceStorageWithoutBarrierIsCaughtInReversedAndShuffledOrder) {
  std::vector<int> want;
  for (const fqemu::Order o : {fqemu::Order::kForward, fqemu::Order::kReversed, fqemu::Order::kShuffled}) {
    in_order(o, [&] { EXPECT_EQ(run_row_sums(true, &want), want) << "with the barrier, order " << static_cast<int>(o); });
  }
  in_order(fqemu::Order::kReversed, [&] { EXPECT_NE(run_row_sums(false, &want), want); });
  in_order(fqemu::Order::kShuffled, [&] { EXPECT_NE(run_row_sums(false, &want), want); });
  // In forward order thread 0 reads every warp's aggregate before the other warps reach the
  // next round: this bug needs the other orders (why ctest runs all three).
  in_order(fqemu::Order::kForward, [&] { EXPECT_EQ(run_row_sums(false, &want), want); });
}

// --- barriers ----------------------------------------------------------------------------

__global__ void partial_barrier_kernel(int* out) {
  if (threadIdx.x >= 16) return;  // the planted bug: half the block leaves before the barrier
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(Barriers, PartialSyncthreadsAborts) {
  int* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, 32 * sizeof(int)));
  EXPECT_DEATH(
      {
        partial_barrier_kernel<<<1, 32>>>(d);
        cudaDeviceSynchronize();
      },
      "__syncthreads at .*test_harness.cu:[0-9]+ reached by 16 of 32 threads");
  cudaFree(d);
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

TEST(Barriers, DivergentSyncthreadsAborts) {
  int* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, 64 * sizeof(int)));
  EXPECT_DEATH(divergent_barrier_kernel<<<1, 64>>>(d), "threads wait at different __syncthreads");
  cudaFree(d);
}

// --- launch limits -------------------------------------------------------------------------

__global__ void mark_kernel(int* out) { out[blockIdx.x * blockDim.x + threadIdx.x] = 7; }

TEST(Limits, OverLimitLaunchesAreRefusedAndRunNothing) {
  int* d = nullptr;
  const size_t n = 2048;
  ASSERT_CUDA(cudaMalloc(&d, n * sizeof(int)));
  ASSERT_CUDA(cudaMemset(d, 0, n * sizeof(int)));
  mark_kernel<<<1, 1025>>>(d);  // more than 1024 threads in a block
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  mark_kernel<<<dim3(1, 65536), 1>>>(d);  // gridDim.y above 65535
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  mark_kernel<<<1, dim3(1, 1, 65)>>>(d);  // blockDim.z above 64
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  mark_kernel<<<0, 32>>>(d);  // an empty grid
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  mark_kernel<<<1, 32, 48 * 1024 + 1>>>(d);  // dynamic shared memory above 48 KB without opt-in
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(host_copy(d, n), std::vector<int>(n, 0));
  mark_kernel<<<2, 1024>>>(d);  // at the limits: runs
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(host_copy(d, n), std::vector<int>(n, 7));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // the error was cleared by the read
  cudaFree(d);
}

__global__ void big_static_shared_kernel(int* out) {
  __shared__ int a[8192];
  __shared__ int b[8192];  // 64 KB of static shared memory in all
  a[threadIdx.x] = 1;
  b[threadIdx.x] = 2;
  out[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}

TEST(Limits, StaticSharedMemoryAbove48KBAborts) {
  int* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, 32 * sizeof(int)));
  EXPECT_DEATH(big_static_shared_kernel<<<1, 32>>>(d), "bytes of static and 0 bytes of dynamic shared memory");
  cudaFree(d);
}

extern __shared__ float dynamic_tile[];

__global__ void dynamic_shared_kernel(float* out, int n, bool overrun) {
  const int t = threadIdx.x;
  dynamic_tile[t] = static_cast<float>(t);
  if (overrun && t == 0) dynamic_tile[n] = 1.0f;  // one past the launch's byte count
  __syncthreads();
  out[t] = dynamic_tile[n - 1 - t];
}

TEST(Limits, DynamicSharedMemoryHasTheLaunchSize) {
  float* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, 64 * sizeof(float)));
  dynamic_shared_kernel<<<1, 64, 64 * sizeof(float)>>>(d, 64, false);
  ASSERT_CUDA(cudaGetLastError());
  const std::vector<float> y = host_copy(d, 64);
  for (int t = 0; t < 64; ++t) ASSERT_EQ(y[t], 63.0f - t);
  EXPECT_DEATH(dynamic_shared_kernel<<<1, 64, 64 * sizeof(float)>>>(d, 64, true), "heap-buffer-overflow");
  cudaFree(d);
}

__global__ void __launch_bounds__(64) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

TEST(Limits, LaunchAboveTheKernelsLaunchBoundsAborts) {
  int* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, 128 * sizeof(int)));
  bounded_kernel<<<1, 64>>>(d);  // at the bound: runs
  ASSERT_CUDA(cudaGetLastError());
  EXPECT_EQ(host_copy(d, 64), std::vector<int>(64, 1));
  EXPECT_DEATH(bounded_kernel<<<1, 128>>>(d), "__launch_bounds__\\(64\\) was launched with blocks of 128 threads");
  cudaFree(d);
}

// --- memory --------------------------------------------------------------------------------

TEST(Memory, CopiesAreCheckedAgainstTheirDirection) {
  float* d = nullptr;
  std::vector<float> h(16, 1.0f);
  ASSERT_CUDA(cudaMalloc(&d, 16 * sizeof(float)));
  EXPECT_EQ(cudaMemcpy(d, h.data(), 16 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(h.data(), d, 16 * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 16 * sizeof(float), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 17 * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // too long
  EXPECT_EQ(cudaMemcpy(d + 1, d, 15 * sizeof(float), cudaMemcpyDeviceToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemset(d + 8, 0, 9 * sizeof(float)), cudaErrorInvalidValue);  // past the end
  EXPECT_EQ(cudaFree(h.data()), cudaErrorInvalidValue);
  cudaGetLastError();
  EXPECT_EQ(cudaFree(d), cudaSuccess);
}

TEST(Memory, DeviceMemoryStartsAsGarbage) {
  // Two fresh buffers are neither zero nor equal: a kernel that leaves an output unwritten
  // shows as a mismatch.
  const size_t n = 4096;
  unsigned char *a = nullptr, *b = nullptr;
  ASSERT_CUDA(cudaMalloc(&a, n));
  ASSERT_CUDA(cudaMalloc(&b, n));
  const std::vector<unsigned char> ha = host_copy(a, n), hb = host_copy(b, n);
  EXPECT_NE(ha, std::vector<unsigned char>(n, 0));
  EXPECT_NE(ha, hb);
  cudaFree(a);
  cudaFree(b);
}

// --- the cub::BlockReduce stand-in -------------------------------------------------------

// Every thread writes what Reduce returned to it.
__global__ void reduce_all_kernel(const double* in, double* out) {
  using BlockReduce = cub::BlockReduce<double, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  out[threadIdx.x] = BlockReduce(temp).Sum(in[threadIdx.x]);
}

TEST(BlockReduceStandIn, SumsInCubOrderIntoThreadZeroOnly) {
  // Values whose sum depends on the order of the additions.
  std::vector<double> x(kReduceThreads);
  for (int i = 0; i < kReduceThreads; ++i) x[i] = (i % 3 == 0 ? 1e16 : 1.0) * (i % 2 ? -1.0 : 1.0) + 0.1 * i;
  // CUB's order, written out: a shuffle-down tree per warp of 32, then warps left to right.
  double want = 0.0;
  for (int w = 0; w < kReduceThreads / 32; ++w) {
    std::vector<double> v(x.begin() + 32 * w, x.begin() + 32 * w + 32);
    for (int d = 1; d < 32; d *= 2) {
      std::vector<double> next(v);
      for (int i = 0; i + d < 32; ++i) next[i] = v[i] + v[i + d];
      v = next;
    }
    want = w == 0 ? v[0] : want + v[0];
  }
  double sequential = 0.0;
  for (double v : x) sequential += v;
  ASSERT_NE(want, sequential) << "the values must tell the two orders apart";
  double* dx = device_copy(x);
  double* dy = nullptr;
  ASSERT_CUDA(cudaMalloc(&dy, kReduceThreads * sizeof(double)));
  reduce_all_kernel<<<1, kReduceThreads>>>(dx, dy);
  ASSERT_CUDA(cudaGetLastError());
  const std::vector<double> y = host_copy(dy, kReduceThreads);
  EXPECT_EQ(y[0], want);
  int also_total = 0;
  for (int t = 1; t < kReduceThreads; ++t) also_total += y[t] == want;
  EXPECT_EQ(also_total, 0) << "threads other than 0 must not receive the total";
  cudaFree(dx);
  cudaFree(dy);
}

TEST(BlockReduceStandIn, WrongBlockSizeAborts) {
  double* d = nullptr;
  ASSERT_CUDA(cudaMalloc(&d, kReduceThreads * sizeof(double)));
  EXPECT_DEATH(reduce_all_kernel<<<1, 128>>>(d, d), "cub::BlockReduce<..., 256 threads> used in a block of 128");
  cudaFree(d);
}

}  // namespace
