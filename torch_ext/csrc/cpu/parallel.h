// How the CPU bindings split elementwise work over ATen's intra-op threads: one grain for
// every quant-dequant-shaped loop (over 8-element mask groups), so that all ops go parallel
// at the same size. The chunking does not enter any elementwise result.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

#include "fakequant/fake_quant.h"

namespace fakequant {
namespace ext {

// Elements per parallel chunk: 32K, as ATen splits. at::parallel_for runs a range no longer
// than its grain on one thread, so 64K elements is the smallest size that uses two; a 64K
// grain kept 64K-element calls on one thread, behind ATen (docs/perf-notes.md, "How the CPU
// numbers got here").
constexpr int64_t kChunkElements = 32768;
constexpr int64_t kChunkGroups = kChunkElements / kMaskGroup;

// fn(begin, end) over the mask groups [0, mask_bytes(numel)) in chunks of kChunkGroups.
template <typename Fn>
void parallel_over_mask_groups(int64_t numel, const Fn& fn) {
  at::parallel_for(0, mask_bytes(numel), kChunkGroups, fn);
}

}  // namespace ext
}  // namespace fakequant
