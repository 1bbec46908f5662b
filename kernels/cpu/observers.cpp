// CPU reference of the reductions that feed qparams and of the observer updates.
//
// The reductions keep kLanes independent lanes (max / min as plain compares, plus a NaN flag),
// which the compiler vectorises; NaN is applied at the end, so the result propagates NaN
// as torch.amax does without a NaN test in the hot loop.
#include <algorithm>
#include <cmath>
#include <limits>

#include "fakequant/dispatch.h"
#include "fakequant/observers.h"

namespace fakequant {
namespace {

constexpr int kLanes = 16;
constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Acc {
  float a, b;  // abs-max (a) or min (a) / max (b)
};

// Reduce x[0, n) into one accumulator pair.
template <typename T, ReduceKind kKind>
inline __attribute__((always_inline)) Acc reduce_contiguous_body(const T* __restrict__ x, int64_t n) {
  // All lanes are floats (the NaN flag too), so every select is one vector blend.
  float lo[kLanes], hi[kLanes], nan[kLanes];
  for (int j = 0; j < kLanes; ++j) lo[j] = kInf, hi[j] = kKind == ReduceKind::kAbsMax ? 0.0f : -kInf, nan[j] = 0.0f;
  int64_t i = 0;
  // Abs-max runs the min/max lanes and ends with max(-min, max) = max |x| (exact): GCC 12 does
  // not vectorise a lane update through fabs (it compiled to one scalar compare and branch per
  // element, 10x slower than the min/max loop; docs/perf-notes.md).
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = to_float(x[i + j]);
      nan[j] = v != v ? 1.0f : nan[j];
      lo[j] = v < lo[j] ? v : lo[j];
      hi[j] = v > hi[j] ? v : hi[j];
    }
  }
  for (; i < n; ++i) {
    const float v = to_float(x[i]);
    nan[0] = v != v ? 1.0f : nan[0];
    lo[0] = std::min(lo[0], v);
    hi[0] = std::max(hi[0], v);
  }
  Acc r{kInf, kKind == ReduceKind::kAbsMax ? 0.0f : -kInf};
  bool any_nan = false;
  for (int j = 0; j < kLanes; ++j) {
    r.a = std::min(r.a, lo[j]);
    r.b = std::max(r.b, hi[j]);
    any_nan |= nan[j] != 0.0f;
  }
  if constexpr (kKind == ReduceKind::kAbsMax) r.a = r.b = std::max(-r.a, r.b);  // lanes start at +inf / 0
  if (any_nan) r.a = r.b = kNaN;
  return r;
}

// The same loop compiled for AVX2 where the CPU has it (the library is otherwise built for
// the baseline ISA; min / max are exact, so both versions give the same bits).
#if defined(__x86_64__) && defined(__GNUC__)
template <typename T, ReduceKind kKind>
__attribute__((target("avx2"))) Acc reduce_contiguous_avx2(const T* __restrict__ x, int64_t n) {
  return reduce_contiguous_body<T, kKind>(x, n);
}
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename T, ReduceKind kKind>
Acc reduce_contiguous(const T* __restrict__ x, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) return reduce_contiguous_avx2<T, kKind>(x, n);
#endif
  return reduce_contiguous_body<T, kKind>(x, n);
}

// -0 -> +0, anything else unchanged. Min and max of +0 and -0 are either, depending on the
// order in which they are met, so every folded value is normalised and a zero result is +0
// whatever the order (the CUDA reduction does the same at its end).
inline float positive_zero(float v) { return v + 0.0f; }

template <ReduceKind kKind>
void fold(float* out_a, float* out_b, int64_t c, Acc v) {
  if constexpr (kKind == ReduceKind::kAbsMax) {
    out_a[c] = nan_max(out_a[c], positive_zero(v.a));
  } else {
    out_a[c] = nan_min(out_a[c], positive_zero(v.a));
    out_b[c] = nan_max(out_b[c], positive_zero(v.b));
  }
}

template <typename T, ReduceKind kKind>
void reduce_range_typed(const ReduceArgs& args, int64_t begin, int64_t end, float* out_a, float* out_b) {
  const T* x = static_cast<const T*>(args.input);
  const int64_t channels = args.channels;
  const int64_t stride = args.channel_stride;
  if (channels == 1) {
    fold<kKind>(out_a, out_b, 0, reduce_contiguous<T, kKind>(x + begin, end - begin));
    return;
  }
  if (stride == 1) {
    // The channel changes every element (e.g. channels_last along C): element by element.
    int64_t c = begin % channels;
    for (int64_t i = begin; i < end; ++i) {
      const float v = to_float(x[i]);
      if constexpr (kKind == ReduceKind::kAbsMax) {
        fold<kKind>(out_a, out_b, c, Acc{std::fabs(v), std::fabs(v)});
      } else {
        fold<kKind>(out_a, out_b, c, Acc{v, v});
      }
      if (++c == channels) c = 0;
    }
    return;
  }
  // Runs of `stride` elements of one channel.
  for (int64_t e = begin; e < end;) {
    const int64_t run = e / stride;
    const int64_t stop = std::min(end, (run + 1) * stride);
    fold<kKind>(out_a, out_b, run % channels, reduce_contiguous<T, kKind>(x + e, stop - e));
    e = stop;
  }
}

template <ReduceKind kKind>
void reduce_dtype_dispatch(const ReduceArgs& args, int64_t begin, int64_t end, float* out_a, float* out_b) {
  dispatch_dtype(args.dtype, [&](auto t) {
    reduce_range_typed<typename decltype(t)::type, kKind>(args, begin, end, out_a, out_b);
  });
}

}  // namespace

void reduce_identity(ReduceKind kind, int64_t channels, float* out_a, float* out_b) {
  for (int64_t c = 0; c < channels; ++c) {
    if (kind == ReduceKind::kAbsMax) {
      out_a[c] = 0.0f;
    } else {
      out_a[c] = kInf;
      out_b[c] = -kInf;
    }
  }
}

void reduce_cpu_range(const ReduceArgs& args, ReduceKind kind, int64_t begin, int64_t end, float* out_a,
                      float* out_b) {
  begin = std::max<int64_t>(begin, 0);
  end = std::min(end, args.numel);
  if (begin >= end) return;
  if (kind == ReduceKind::kAbsMax) {
    reduce_dtype_dispatch<ReduceKind::kAbsMax>(args, begin, end, out_a, out_b);
  } else {
    reduce_dtype_dispatch<ReduceKind::kMinMax>(args, begin, end, out_a, out_b);
  }
}

void reduce_combine(ReduceKind kind, int64_t channels, const float* part_a, const float* part_b, float* out_a,
                    float* out_b) {
  for (int64_t c = 0; c < channels; ++c) {
    if (kind == ReduceKind::kAbsMax) {
      out_a[c] = nan_max(out_a[c], positive_zero(part_a[c]));
    } else {
      out_a[c] = nan_min(out_a[c], positive_zero(part_a[c]));
      out_b[c] = nan_max(out_b[c], positive_zero(part_b[c]));
    }
  }
}

void reduce_cpu(const ReduceArgs& args, ReduceKind kind, float* out_a, float* out_b) {
  reduce_identity(kind, args.channels, out_a, out_b);
  reduce_cpu_range(args, kind, 0, args.numel, out_a, out_b);
}

float moving_average_abs_max_update_cpu(const MovingAverageAbsMaxState& s, float abs_max) {
  const MovingAverageAbsMaxUpdate u = moving_average_abs_max(*s.state, *s.accum, abs_max, s.moving_rate);
  if (!moving_average_abs_max_accepted(abs_max, u)) return kNaN;  // state untouched, a poisoning scale
  *s.state = u.state;
  *s.accum = u.accum;
  *s.scale = u.scale;
  return u.scale;
}

float range_abs_max_update_cpu(const RangeAbsMaxState& s, float abs_max) {
  const int64_t it = *s.iter;
  if (it < 0) return kNaN;  // out of contract: state untouched, a NaN (poisoning) scale
  if (!is_finite(abs_max)) return kNaN;  // a non-finite batch: state untouched, poisoned output
  const int64_t idx = it % s.window_size;
  const float removed = s.window[idx];
  s.window[idx] = abs_max;
  float scale = *s.scale;
  if (scale < abs_max) {
    scale = abs_max;
  } else if (range_abs_max_left_window(removed, scale)) {
    // From 0, the identity of an abs-max; a NaN anywhere in the window makes the scale NaN.
    const int64_t size = std::min(it, s.window_size);
    if (size > 0) {
      scale = 0.0f;
      for (int64_t k = 0; k < size; ++k) scale = nan_max(scale, std::fabs(s.window[k]));
    }
  }
  *s.scale = scale;
  *s.iter = range_abs_max_next_iter(it, s.window_size);
  return scale;
}

void moving_average_min_max_update_cpu(const MovingAverageMinMaxState& s, const float* current_min,
                                       const float* current_max, bool observe, uint8_t* rejected) {
  const bool observer_on = *s.observer_on != 0;
  const bool fake_quant_on = *s.fake_quant_on != 0;
  for (int64_t c = 0; c < s.channels; ++c) {
    bool applied = true;
    if (observe && observer_on) {
      applied = moving_average_min_max_step(&s.running_min[c], &s.running_max[c], current_min[c], current_max[c],
                                            s.averaging_const);
    }
    if (rejected != nullptr) rejected[c] = applied ? 0 : 1;
    if (fake_quant_on) {
      const AffineQParams q = choose_qparams(s.running_min[c], s.running_max[c], s.quant_min, s.quant_max,
                                             s.symmetric, false);
      s.scale[c] = q.scale;
      s.zero_point[c] = q.zero_point;
    }
  }
}

}  // namespace fakequant
