// The activation shapes of the ConvBN GoogleTests (CPU and CUDA): [n, c, hw] tensors in NCHW
// or channels_last memory order, and where each element's channel lies.
#pragma once

#include <cstdint>
#include <ostream>
#include <sstream>
#include <string>

#include "fakequant/convbn.h"

namespace fakequant_test {

struct ConvBnShape {
  int64_t n, c, hw;
  bool channels_last;
};

inline fakequant::ActivationLayout layout_of(const ConvBnShape& s) {
  fakequant::ActivationLayout l;
  l.channels = s.c;
  l.outer = s.channels_last ? s.n * s.hw : s.n;
  l.inner = s.channels_last ? 1 : s.hw;
  return l;
}

// The channel of the element at memory offset i.
inline int64_t channel_of(const fakequant::ActivationLayout& l, int64_t i) { return (i / l.inner) % l.channels; }

inline std::string describe(const ConvBnShape& s) {
  std::ostringstream os;
  os << "[" << s.n << ", " << s.c << ", " << s.hw << "] " << (s.channels_last ? "channels_last" : "nchw");
  return os.str();
}

inline void PrintTo(const ConvBnShape& s, std::ostream* os) { *os << describe(s); }

}  // namespace fakequant_test
