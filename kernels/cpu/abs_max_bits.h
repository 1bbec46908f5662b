// max |x| of a run as abs_bits (quant_math.h), for the CPU kernels that GCC clones per vector
// width (target_clones): one loop, inlined into each clone so that it compiles for the clone's
// vector width.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fakequant/quant_math.h"

#if defined(__GNUC__)
#define FQ_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define FQ_ALWAYS_INLINE inline
#endif

namespace fakequant {

// An integer max over the |x| bits: exact, NaN above inf, and below 2^31, so a signed max (which
// every x86 vector extension has) orders them; no control flow, so it vectorises. The 16-bit
// floats order their magnitudes the same way in their own 15 low bits (NaN above inf): twice
// the lanes of the widened max, widened once at the end. 0 for an empty run.
template <typename T>
FQ_ALWAYS_INLINE uint32_t abs_max_bits(const T* __restrict__ x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    int32_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, x + i, sizeof(u));
      const int32_t b = static_cast<int32_t>(u & 0x7FFFFFFFu);
      m = b > m ? b : m;
    }
    return static_cast<uint32_t>(m);
  } else {
    int16_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int16_t b = static_cast<int16_t>(x[i].bits & 0x7FFFu);
      m = b > m ? b : m;
    }
    return abs_bits(to_float(T{static_cast<uint16_t>(m)}));
  }
}

}  // namespace fakequant
