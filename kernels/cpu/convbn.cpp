// CPU reference of the ConvBN kernels (fakequant/convbn.h).
//
// Activations are walked in memory order as runs of one channel ([b, e) with one channel c):
// NCHW gives runs of H*W elements, channels_last runs of one element with the channel
// stepping by one. Sums are accumulated in double.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fakequant/convbn.h"
#include "pack_bits.h"

// The passes over every activation (moments and epilogue forward, sums and BN/ReLU backward)
// are compiled twice (GCC target_clones): for x86-64-v3 (AVX2: 8 float / 4 double lanes,
// 16-bit loads and stores converted in vector registers) and for the baseline; the loader
// picks the version the CPU runs. Only the instruction set differs (no contraction, no
// reassociation): the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FQ_CPU_AVX2_CLONES __attribute__((target_clones("default", "arch=x86-64-v3"), flatten))
#else
#define FQ_CPU_AVX2_CLONES
#endif

namespace fakequant {
namespace {

// f(has_mask, has_z) with both flags as std::true_type / std::false_type, so that each
// combination of an optional ReLU mask and an optional pre-BN input is a loop of its own.
template <typename F>
void with_mask_and_z(bool has_mask, bool has_z, F&& f) {
  using Yes = std::true_type;
  using No = std::false_type;
  if (has_mask) {
    has_z ? f(Yes{}, Yes{}) : f(Yes{}, No{});
  } else {
    has_z ? f(No{}, Yes{}) : f(No{}, No{});
  }
}

// f(c, b, e) for the runs of one channel covering [begin, end) in memory order.
template <typename F>
void for_each_run(const ActivationLayout& l, int64_t begin, int64_t end, F f) {
  if (begin >= end) return;
  const int64_t inner = l.inner;
  int64_t run = begin / inner;
  int64_t c = run % l.channels;
  for (int64_t e = begin; e < end;) {
    const int64_t run_end = std::min((run + 1) * inner, end);
    f(c, e, run_end);
    e = run_end;
    ++run;
    if (++c == l.channels) c = 0;
  }
}

inline bool mask_bit(const uint8_t* mask, int64_t i) { return ((mask[i >> 3] >> (i & 7)) & 1u) != 0; }

constexpr int kLanes = 4;
using Double4 = double __attribute__((vector_size(kLanes * sizeof(double))));

// v where the ReLU bit is set, else +0 (NaN included), by masking the bits: a select the
// compiler could turn into a branch on random bits costs more than the rest of the loop.
inline float keep_if(float v, bool bit) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  u &= 0u - static_cast<uint32_t>(bit);
  std::memcpy(&v, &u, sizeof(v));
  return v;
}
inline double keep_if(double v, bool bit) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof(u));
  u &= uint64_t{0} - static_cast<uint64_t>(bit);
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

}  // namespace

FQ_CPU_AVX2_CLONES
void channel_moment_sums_cpu(const ChannelMomentsArgs& a, int64_t begin, int64_t end, double* s1, double* s2) {
  end = std::min(end, a.layout.numel());
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.input);
    const int64_t inner = a.layout.inner;
    for_each_run(a.layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
      const double shift = static_cast<double>(load_acc(x[c * inner]));
      // Four independent partial sums per run, lane j taking elements j, j + 4, ... (the double
      // adds would otherwise wait on one dependency chain). Written as one 4-wide vector: GCC
      // does not turn four scalar lanes into vector adds by itself.
      const Double4 sh = {shift, shift, shift, shift};
      Double4 t1 = {}, t2 = {};
      int64_t i = b;
      for (; i + kLanes <= e; i += kLanes) {
        Double4 d = {static_cast<double>(load_acc(x[i])), static_cast<double>(load_acc(x[i + 1])),
                     static_cast<double>(load_acc(x[i + 2])), static_cast<double>(load_acc(x[i + 3]))};
        d -= sh;
        t1 += d;
        t2 += d * d;
      }
      for (; i < e; ++i) {
        const double d = static_cast<double>(load_acc(x[i])) - shift;
        t1[0] += d;
        t2[0] += d * d;
      }
      s1[c] += (t1[0] + t1[1]) + (t1[2] + t1[3]);
      s2[c] += (t2[0] + t2[1]) + (t2[2] + t2[3]);
    });
  });
}

void channel_moments_finish_cpu(const ChannelMomentsArgs& a, const double* s1, const double* s2) {
  const double n = static_cast<double>(a.layout.per_channel());
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.input);
    for (int64_t c = 0; c < a.layout.channels; ++c) {
      const double shift = n > 0 ? static_cast<double>(load_acc(x[c * a.layout.inner])) : 0.0;
      convbn_moments_from_sums(shift, s1[c], s2[c], n, a.mean + c, a.var + c);
    }
  });
}

void channel_moments_cpu(const ChannelMomentsArgs& a) {
  std::vector<double> s1(static_cast<size_t>(a.layout.channels), 0.0), s2(s1);
  channel_moment_sums_cpu(a, 0, a.layout.numel(), s1.data(), s2.data());
  channel_moments_finish_cpu(a, s1.data(), s2.data());
}

FQ_CPU_AVX2_CLONES
void channel_grad_sums_cpu_range(const ChannelGradSumsArgs& a, int64_t begin, int64_t end, double* sums) {
  end = std::min(end, a.layout.numel());
  const int64_t C = a.layout.channels;
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* dy = static_cast<const T*>(a.grad_output);
    const T* z = static_cast<const T*>(a.pre_bn);
    const uint8_t* mask = a.relu_mask;
    auto sum_runs = [&](auto has_mask, auto has_z) {
      for_each_run(a.layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
        const double mean = has_z ? a.mean[c] : 0.0;
        // Load, then select: no branch on the (random) ReLU bits.
        auto grad_at = [&](int64_t i) {
          const double d = static_cast<double>(load_acc(dy[i]));
          if constexpr (decltype(has_mask)::value) return keep_if(d, mask_bit(mask, i));
          return d;
        };
        auto centred_at = [&](int64_t i) { return static_cast<double>(load_acc(z[i])) - mean; };
        // Lane j takes elements j, j + 4, ... as in the moments.
        Double4 t0 = {}, t1 = {};
        int64_t i = b;
        for (; i + kLanes <= e; i += kLanes) {
          const Double4 g = {grad_at(i), grad_at(i + 1), grad_at(i + 2), grad_at(i + 3)};
          t0 += g;
          if constexpr (decltype(has_z)::value) {
            const Double4 zc = {centred_at(i), centred_at(i + 1), centred_at(i + 2), centred_at(i + 3)};
            t1 += g * zc;
          }
        }
        for (; i < e; ++i) {
          const double g = grad_at(i);
          t0[0] += g;
          if constexpr (decltype(has_z)::value) t1[0] += g * centred_at(i);
        }
        sums[c] += (t0[0] + t0[1]) + (t0[2] + t0[3]);
        sums[C + c] += (t1[0] + t1[1]) + (t1[2] + t1[3]);
      });
    };
    with_mask_and_z(mask != nullptr, z != nullptr, sum_runs);
  });
}

void channel_grad_sums_cpu(const ChannelGradSumsArgs& a) {
  std::fill(a.sums, a.sums + 2 * a.layout.channels, 0.0);
  channel_grad_sums_cpu_range(a, 0, a.layout.numel(), a.sums);
}

FQ_CPU_AVX2_CLONES
void convbn_epilogue_cpu_range(const ConvBnEpilogueArgs& a, int64_t group_begin, int64_t group_end) {
  const int64_t numel = a.layout.numel();
  const int64_t begin = std::min(group_begin * kMaskGroup, numel);
  const int64_t end = std::min(group_end * kMaskGroup, numel);
  if (begin >= end) return;
  const int64_t C = a.layout.channels;
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const T* x = static_cast<const T*>(a.input);
    T* y = static_cast<T*>(a.output);
    const Acc* coef = static_cast<const Acc*>(a.coef);
    const bool relu = a.relu_mask != nullptr;
    for_each_run(a.layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
      const Acc A = coef[c], B = coef[C + c];
      if (!relu) {
        for (int64_t i = b; i < e; ++i) y[i] = store_as<T, Acc>(load_acc(x[i]) * A + B);
        return;
      }
      for (int64_t i = b; i < e; ++i) {
        const Acc v = load_acc(x[i]) * A + B;
        y[i] = store_as<T, Acc>(v <= Acc(0) ? Acc(0) : v);  // NaN passes, as torch.relu
      }
    });
    if (!relu) return;
    // Bit i = output > 0 (ReLU's output is positive exactly where its input was), from the
    // stored output: a block of flag bytes (a loop the compiler vectorises), then one multiply
    // per 8 flags (pack_bits). Only the last group of the tensor can be partial.
    constexpr int64_t kFlagBlock = 512;
    uint8_t flags[kFlagBlock];
    for (int64_t base = begin; base < end; base += kFlagBlock) {
      const int64_t n = std::min(kFlagBlock, end - base);
      for (int64_t j = 0; j < n; ++j) flags[j] = static_cast<uint8_t>(load_acc(y[base + j]) > Acc(0));
      std::fill(flags + n, flags + mask_bytes(n) * kMaskGroup, uint8_t{0});
      uint8_t* mask = a.relu_mask + base / kMaskGroup;
      for (int64_t k = 0; k < mask_bytes(n); ++k) mask[k] = pack_bits(flags + k * kMaskGroup);
    }
  });
}

void convbn_epilogue_cpu(const ConvBnEpilogueArgs& a) {
  convbn_epilogue_cpu_range(a, 0, mask_bytes(a.layout.numel()));
}

FQ_CPU_AVX2_CLONES
void convbn_backward_cpu_range(const ConvBnBackwardArgs& a, int64_t group_begin, int64_t group_end) {
  const int64_t numel = a.layout.numel();
  const int64_t begin = std::min(group_begin * kMaskGroup, numel);
  const int64_t end = std::min(group_end * kMaskGroup, numel);
  const int64_t C = a.layout.channels;
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const ConvBnBackwardBuffers<T> buf = typed_buffers<T>(a);
    const uint8_t* mask = a.relu_mask;
    auto backward_runs = [&](auto has_mask, auto has_z) {
      for_each_run(a.layout, begin, end, [&](int64_t c, int64_t b, int64_t e) {
        const Acc* coef = buf.coef;
        const Acc K = coef[c], MG = coef[C + c], M = coef[2 * C + c], AX = coef[3 * C + c];
        for (int64_t i = b; i < e; ++i) {
          const Acc d = load_acc(buf.grad_output[i]);
          Acc g = d;
          if constexpr (decltype(has_mask)::value) g = keep_if(d, mask_bit(mask, i));
          Acc centered = Acc(0);
          if constexpr (decltype(has_z)::value) centered = (load_acc(buf.pre_bn[i]) - M) * AX;
          buf.grad_pre_bn[i] = store_as<T, Acc>(K * ((g - MG) - centered));
        }
      });
    };
    with_mask_and_z(mask != nullptr, buf.pre_bn != nullptr, backward_runs);
  });
}

void convbn_backward_cpu(const ConvBnBackwardArgs& a) {
  convbn_backward_cpu_range(a, 0, mask_bytes(a.layout.numel()));
}

void fold_weight_cpu_range(const FoldWeightArgs& a, int64_t c_begin, int64_t c_end) {
  const int64_t L = a.channel_length;
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const T* w = static_cast<const T*>(a.weight);
    Acc* out = static_cast<Acc*>(a.folded);
    for (int64_t c = c_begin; c < c_end; ++c) {
      const Acc s = static_cast<Acc>(a.scale[c]);
      for (int64_t j = c * L; j < (c + 1) * L; ++j) out[j] = load_acc(w[j]) * s;
    }
  });
}

void fold_weight_cpu(const FoldWeightArgs& a) { fold_weight_cpu_range(a, 0, a.channels); }

void weight_grad_cpu_range(const WeightGradArgs& a, int64_t c_begin, int64_t c_end) {
  const int64_t L = a.channel_length;
  dispatch_convbn_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const T* gc = static_cast<const T*>(a.grad_conv);
    const T* w = static_cast<const T*>(a.weight);
    T* gw = static_cast<T*>(a.grad_weight);
    for (int64_t c = c_begin; c < c_end; ++c) {
      const Acc s = a.scale != nullptr ? static_cast<Acc>(a.scale[c]) : Acc(1);
      double sum = 0.0;
      for (int64_t j = c * L; j < (c + 1) * L; ++j) {
        const Acc d = (a.mask == nullptr || mask_bit(a.mask, j)) ? load_acc(gc[j]) : Acc(0);
        gw[j] = store_as<T, Acc>(d * s);
        sum += static_cast<double>(d) * static_cast<double>(load_acc(w[j]));
      }
      if (a.weight_sums != nullptr) a.weight_sums[c] = sum;
    }
  });
}

void weight_grad_cpu(const WeightGradArgs& a) { weight_grad_cpu_range(a, 0, a.channels); }

void convbn_channels_cpu(const ConvBnChannelArgs& a) {
  for (int64_t c = 0; c < a.channels; ++c) convbn_channel(a, c);
}

}  // namespace fakequant
