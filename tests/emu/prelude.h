// Force-included (-include) ahead of every rewritten CUDA source of the emulated build: maps
// the CUDA language (qualifiers, built-in variables, intrinsics, atomics) to host C++ on top
// of the emulation runtime (fqemu.h). The CUDA headers are included first, in host mode, so
// that __half / __nv_bfloat16 and their conversions are the CUDA headers' own host code.
// Kernel sources are compiled with FAKEQUANT_EMU_DEVICE_CODE, which defines __CUDA_ARCH__
// so that the device branches of the shared math header are the ones that run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cuda/functional>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fqemu.h"

// What nvcc defines. __CUDACC__ makes the shared headers declare their functions
// __host__ __device__ __forceinline__ (always inlined here, so the kernel files' device
// versions never become out-of-line definitions that the linker could mix up with the CPU
// library's host versions of the same inline functions).
#define __CUDACC__ 1
#if defined(FAKEQUANT_EMU_DEVICE_CODE)
#define __CUDA_ARCH__ 900
#endif

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#define __global__
#define __device__
#define __host__
// Every __shared__ declaration is rewritten (tests/emu/rewrite.py); one that was not must not
// compile into a per-thread variable.
#define __shared__ __shared___declaration_was_not_rewritten_by_the_cuda_emulation
#define __launch_bounds__(...)

#define threadIdx (static_cast<const uint3&>(::fqemu::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::fqemu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::fqemu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::fqemu::g_grid_dim))
#define warpSize 32
#define __syncthreads() ::fqemu::syncthreads(__FILE__, __LINE__)

// --- intrinsics (the exact IEEE operations they name; no contraction: -ffp-contract=off) --

namespace fqemu {
// The reinterpretation intrinsics: the same four bytes read as another type.
template <typename To, typename From>
inline To reinterpret_bits(From v) {
  static_assert(sizeof(To) == sizeof(From), "the intrinsics reinterpret four bytes");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}
}  // namespace fqemu
inline unsigned int __float_as_uint(float x) { return ::fqemu::reinterpret_bits<unsigned int>(x); }
inline int __float_as_int(float x) { return ::fqemu::reinterpret_bits<int>(x); }
inline float __uint_as_float(unsigned int u) { return ::fqemu::reinterpret_bits<float>(u); }
inline float __int_as_float(int i) { return ::fqemu::reinterpret_bits<float>(i); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}

// --- atomics: threads never run at the same time, so a read-modify-write is atomic --------

template <typename T>
inline T fqemu_atomic_update(T* p, T v, int op) {
  const T old = *p;
  switch (op) {
    case 0:
      *p = old + v;
      break;
    case 1:
      *p = v > old ? v : old;
      break;
    case 2:
      *p = v < old ? v : old;
      break;
    default:
      *p = v;
      break;
  }
  return old;
}
inline unsigned int atomicMax(unsigned int* p, unsigned int v) { return fqemu_atomic_update(p, v, 1); }
inline int atomicMax(int* p, int v) { return fqemu_atomic_update(p, v, 1); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return fqemu_atomic_update(p, v, 1); }
inline unsigned int atomicMin(unsigned int* p, unsigned int v) { return fqemu_atomic_update(p, v, 2); }
inline int atomicMin(int* p, int v) { return fqemu_atomic_update(p, v, 2); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return fqemu_atomic_update(p, v, 0); }
inline int atomicAdd(int* p, int v) { return fqemu_atomic_update(p, v, 0); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return fqemu_atomic_update(p, v, 0); }
inline float atomicAdd(float* p, float v) { return fqemu_atomic_update(p, v, 0); }
inline double atomicAdd(double* p, double v) { return fqemu_atomic_update(p, v, 0); }
inline unsigned int atomicExch(unsigned int* p, unsigned int v) { return fqemu_atomic_update(p, v, 3); }
inline int atomicCAS(int* p, int compare, int v) {
  const int old = *p;
  if (old == compare) *p = v;
  return old;
}
inline unsigned int atomicCAS(unsigned int* p, unsigned int compare, unsigned int v) {
  const unsigned int old = *p;
  if (old == compare) *p = v;
  return old;
}
inline void __threadfence() {}
inline void __threadfence_block() {}
