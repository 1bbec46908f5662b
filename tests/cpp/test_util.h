// Pieces the GoogleTest files share that need no device: random test data, random masks and
// the bits of a packed mask.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "fakequant/fake_quant.h"

namespace fakequant_test {

// n values, normal with mean 0 and standard deviation `spread`.
inline std::vector<float> random_inputs(int64_t n, float spread, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = dist(rng);
  return x;
}

// The mask of `numel` elements, every byte random (the padding bits too, which readers must ignore).
inline std::vector<uint8_t> random_mask(int64_t numel, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> mask(static_cast<size_t>(fakequant::mask_bytes(numel)));
  for (auto& b : mask) b = static_cast<uint8_t>(rng());
  return mask;
}

// Bit i of a packed mask: bit i % 8 of byte i / 8.
inline bool mask_bit(const std::vector<uint8_t>& mask, int64_t i) { return ((mask[i / 8] >> (i % 8)) & 1u) != 0; }

}  // namespace fakequant_test
