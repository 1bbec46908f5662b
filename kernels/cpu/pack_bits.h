// The CPU kernels' 1-bit masks: 8 flag bytes packed into one mask byte with one multiply.
#pragma once

#include <cstdint>
#include <cstring>

namespace fakequant {

// 8 bytes, each 0 or 1 (element j in byte j, little-endian load) -> bit j of the result.
inline uint8_t pack_bits(const uint8_t* flags) {
  uint64_t word;
  std::memcpy(&word, flags, sizeof(word));
  return static_cast<uint8_t>((word * 0x0102040810204080ull) >> 56);
}

}  // namespace fakequant
