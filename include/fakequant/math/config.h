// The compilation switches every part of fakequant's scalar math shares: host-only builds get
// `inline` functions, nvcc builds `__host__ __device__ __forceinline__` ones (FQ_HD).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define FQ_HD __host__ __device__ __forceinline__
#else
#define FQ_HD inline
#endif
