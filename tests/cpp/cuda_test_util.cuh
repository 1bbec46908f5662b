// Pieces every CUDA GoogleTest file shares: GPU detection and skipping, a device buffer,
// the DType of a storage type.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <type_traits>

#include "fakequant/fake_quant.h"

// Evaluates expr once (a launch is not repeated to print its error).
#define ASSERT_CUDA(expr)                                                        \
  do {                                                                           \
    const cudaError_t fq_cuda_status_ = (expr);                                  \
    ASSERT_EQ(fq_cuda_status_, cudaSuccess) << cudaGetErrorString(fq_cuda_status_); \
  } while (0)

#define SKIP_WITHOUT_GPU() \
  if (!::fakequant_test::have_gpu()) GTEST_SKIP() << "no CUDA device"

namespace fakequant_test {

inline bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t n) { EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

template <typename T>
constexpr fakequant::DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return fakequant::DType::kFloat32;
  if constexpr (std::is_same_v<T, fakequant::Half>) return fakequant::DType::kFloat16;
  return fakequant::DType::kBFloat16;
}

}  // namespace fakequant_test
