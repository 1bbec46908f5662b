// CPU reference of the learnable-qparam (LSQ / LSQ+) ops.
//
// Forward: the ordinary quant-dequant (fake_quant.cpp) with the forward-rounded zero point.
//
// Backward: one pass over input and grad_output per chunk. Elements are processed in blocks:
// a branch-free loop that the compiler vectorises writes grad_input and the per-element
// grad_scale / grad_zero_point terms (fp32, exactly ATen's values) to stack buffers, then the
// terms are added in double into 8 lanes (lane j takes elements j, j + 8, ...), or - where the
// channel varies fastest - into the per-channel sums element by element. Lanes are added up in
// order at the end of a run of one channel, so the summation order is fixed by the data layout
// alone.
//
// The per-element formula needs two fused multiply-adds (quant_math.h). On x86-64 the chunk
// function is compiled twice (GCC target_clones): for x86-64-v3 (AVX2 + FMA: vector FMAs) and
// for the baseline, where std::fma is the C library's exact routine; the loader picks the
// version the CPU runs. Both give the same bits.
#include <algorithm>
#include <cstring>

#include "fakequant/dispatch.h"
#include "fakequant/learnable.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FQ_CPU_FMA_CLONES __attribute__((target_clones("default", "arch=x86-64-v3"), flatten))
#else
#define FQ_CPU_FMA_CLONES
#endif

namespace fakequant {
namespace {

constexpr int64_t kBlock = 512;           // elements per stack-buffered block
constexpr int64_t kLanes = 8;             // double accumulators per run of one channel
constexpr int64_t kMinChunk = 32768;      // elements per chunk, at least
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kElementsPerPartial = 128;  // partial-sum entries stay <= numel / 128 (+ one row)

float backward_zero_point(const LearnableQParams& qp, float zero_point) {
  const float qmin = static_cast<float>(qp.quant_min);
  const float qmax = static_cast<float>(qp.quant_max);
  return qp.kind == LearnableKind::kPerTensor ? learnable_zero_point_backward_per_tensor(zero_point, qmin, qmax)
                                              : learnable_zero_point_backward_per_channel(zero_point, qmin, qmax);
}

// 8 double lanes as two 4-wide vectors (GCC/Clang vector extensions, lowered to whatever the
// target has): written as a scalar loop, GCC keeps 16 scalar accumulators and converts and
// adds one element at a time. Lane j adds elements j, j + 8, ... of a run.
typedef double Double4 __attribute__((vector_size(32)));
typedef float Float4 __attribute__((vector_size(16)));
struct Lanes {
  Double4 lo, hi;
};

inline void add_lanes(Lanes& lanes, const float* terms) {
  Float4 a, b;
  std::memcpy(&a, terms, sizeof(a));
  std::memcpy(&b, terms + 4, sizeof(b));
  lanes.lo += __builtin_convertvector(a, Double4);
  lanes.hi += __builtin_convertvector(b, Double4);
}

inline double lanes_total(const Lanes& lanes) {
  double total = 0.0;
  for (int j = 0; j < 4; ++j) total += lanes.lo[j];
  for (int j = 0; j < 4; ++j) total += lanes.hi[j];
  return total;
}

// The qparams of one run: constant (entry 0 throughout) or per element (entry k for element k).
struct BackwardSegment {
  const float* scale;
  const float* inv;
  const float* zero_point;
  const uint8_t* valid;
};

template <typename T, bool kGradInput, bool kReduce, bool kPerElement>
inline void backward_run(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t count,
                         const BackwardSegment& seg, float qmin, float qmax, float grad_factor,
                         double* __restrict__ sum_scale, double* __restrict__ sum_zero_point) {
  const float poison = bits_float(0x7FC00000u);
  alignas(64) float terms_scale[kBlock];
  alignas(64) float terms_zero_point[kBlock];
  Lanes lane_scale = {};
  Lanes lane_zero_point = {};
  for (int64_t b0 = 0; b0 < count; b0 += kBlock) {
    const int64_t len = std::min(kBlock, count - b0);
    for (int64_t k = 0; k < len; ++k) {
      const int64_t t = kPerElement ? b0 + k : 0;
      const LearnableGrad g = learnable_grad(to_float(x[b0 + k]), to_float(dy[b0 + k]), seg.scale[t], seg.inv[t],
                                             seg.zero_point[t], qmin, qmax, grad_factor);
      const bool ok = seg.valid[t] != 0;
      if constexpr (kGradInput) dx[b0 + k] = from_float<T>(ok ? g.grad_input : poison);
      if constexpr (kReduce) {
        terms_scale[k] = ok ? g.grad_scale : poison;
        terms_zero_point[k] = ok ? g.grad_zero_point : poison;
      }
    }
    if constexpr (kReduce) {
      if constexpr (kPerElement) {
        double* __restrict__ ss = sum_scale + b0;
        double* __restrict__ sz = sum_zero_point + b0;
        for (int64_t k = 0; k < len; ++k) {
          ss[k] += static_cast<double>(terms_scale[k]);
          sz[k] += static_cast<double>(terms_zero_point[k]);
        }
      } else {
        const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
        for (int64_t k = len; k < padded; ++k) terms_scale[k] = 0.0f, terms_zero_point[k] = 0.0f;
        for (int64_t k = 0; k < padded; k += kLanes) {
          add_lanes(lane_scale, terms_scale + k);
          add_lanes(lane_zero_point, terms_zero_point + k);
        }
      }
    }
  }
  if constexpr (kReduce && !kPerElement) {
    *sum_scale += lanes_total(lane_scale);
    *sum_zero_point += lanes_total(lane_zero_point);
  }
}

// Elements [begin, end) in runs of one channel (or rows of channels when the channel varies
// fastest), each run handed to backward_run.
template <typename T, bool kGradInput, bool kReduce>
void backward_range(const LearnableBackwardArgs& a, const LearnableQParams& qp, const LearnableBackwardPlan& plan,
                    int64_t begin, int64_t end, double* sum_scale, double* sum_zero_point) {
  const T* x = static_cast<const T*>(a.input);
  const T* dy = static_cast<const T*>(a.grad_output);
  T* dx = static_cast<T*>(a.grad_input);
  const float qmin = static_cast<float>(qp.quant_min);
  const float qmax = static_cast<float>(qp.quant_max);
  const int64_t channels = plan.channels;
  const int64_t stride = channels > 1 ? qp.channel_stride : a.numel;
  const bool per_element = channels > 1 && stride == 1;
  for (int64_t i = begin; i < end;) {
    const int64_t run = i / stride;
    const int64_t c = channels > 1 ? run % channels : 0;
    const BackwardSegment seg{&plan.scale[c], &plan.inv_scale[c], &plan.zero_point[c], &plan.valid[c]};
    const int64_t stop = std::min(end, per_element ? i + (channels - c) : (run + 1) * stride);
    // Without the gradient (or the sums) those pointers are null: no offset is applied to them.
    T* dxi = kGradInput ? dx + i : nullptr;
    double* ss = kReduce ? sum_scale + c : nullptr;
    double* sz = kReduce ? sum_zero_point + c : nullptr;
    if (per_element) {
      backward_run<T, kGradInput, kReduce, true>(x + i, dy + i, dxi, stop - i, seg, qmin, qmax, qp.grad_factor, ss,
                                                 sz);
    } else {
      backward_run<T, kGradInput, kReduce, false>(x + i, dy + i, dxi, stop - i, seg, qmin, qmax, qp.grad_factor, ss,
                                                  sz);
    }
    i = stop;
  }
}

template <typename T>
void backward_flags(const LearnableBackwardArgs& a, const LearnableQParams& qp, const LearnableBackwardPlan& plan,
                    int64_t begin, int64_t end, double* sum_scale, double* sum_zero_point) {
  const bool grad_input = a.grad_input != nullptr;
  if (grad_input && plan.reduce) {
    backward_range<T, true, true>(a, qp, plan, begin, end, sum_scale, sum_zero_point);
  } else if (grad_input) {
    backward_range<T, true, false>(a, qp, plan, begin, end, sum_scale, sum_zero_point);
  } else if (plan.reduce) {
    backward_range<T, false, true>(a, qp, plan, begin, end, sum_scale, sum_zero_point);
  }
}

FQ_CPU_FMA_CLONES
void backward_chunk_dispatch(const LearnableBackwardArgs& a, const LearnableQParams& qp,
                             const LearnableBackwardPlan& plan, int64_t begin, int64_t end, double* sum_scale,
                             double* sum_zero_point) {
  dispatch_dtype(a.dtype, [&](auto t) {
    backward_flags<typename decltype(t)::type>(a, qp, plan, begin, end, sum_scale, sum_zero_point);
  });
}

}  // namespace

void learnable_forward_qparams(const LearnableQParams& qp, float* scale_out, int32_t* zero_point_out) {
  const float qmin = static_cast<float>(qp.quant_min);
  const float qmax = static_cast<float>(qp.quant_max);
  for (int64_t c = 0; c < qp.channels; ++c) {
    const float s = qp.scale[c];
    const float z = qp.zero_point[c];
    const bool valid = learnable_qparams_valid(s, z);
    // Clamped into [quant_min, quant_max] before the conversion, so always representable.
    zero_point_out[c] = valid ? static_cast<int32_t>(learnable_zero_point_forward(z, qmin, qmax)) : qp.quant_min;
    scale_out[c] = valid ? s : bits_float(0x7FC00000u);
  }
}

void fake_quant_learnable_cpu_range(const LearnableForwardArgs& a, const LearnableQParams& qp, const float* scale,
                                    const int32_t* zero_point, int64_t group_begin, int64_t group_end) {
  const FakeQuantArgs args{a.dtype, a.input, a.output, nullptr, a.numel};
  if (qp.channels == 1) {
    const PerTensorQParams pt{scale, zero_point, qp.quant_min, qp.quant_max, Rounding::kHalfEven};
    fake_quant_per_tensor_cpu_range(args, pt, group_begin, group_end);
  } else {
    PerChannelQParams pc;
    pc.scale = scale;
    pc.zero_point = zero_point;
    pc.zero_point_type = ZeroPointType::kInt32;
    pc.channels = qp.channels;
    pc.channel_stride = qp.channel_stride;
    pc.quant_min = qp.quant_min;
    pc.quant_max = qp.quant_max;
    fake_quant_per_channel_cpu_range(args, pc, group_begin, group_end);
  }
}

void fake_quant_learnable_cpu(const LearnableForwardArgs& a, const LearnableQParams& qp) {
  if (a.numel == 0) return;
  std::vector<float> scale(qp.channels);
  std::vector<int32_t> zero_point(qp.channels);
  learnable_forward_qparams(qp, scale.data(), zero_point.data());
  fake_quant_learnable_cpu_range(a, qp, scale.data(), zero_point.data(), 0, mask_bytes(a.numel));
}

LearnableBackwardPlan plan_learnable_backward_cpu(const LearnableBackwardArgs& a, const LearnableQParams& qp) {
  LearnableBackwardPlan plan;
  const int64_t channels = qp.channels;  // 0 only for an empty input (a zero-size axis)
  plan.channels = channels;
  plan.reduce = a.grad_scale != nullptr || a.grad_zero_point != nullptr;
  int64_t chunks = std::clamp<int64_t>((a.numel + kMinChunk - 1) / kMinChunk, 1, kMaxChunks);
  chunks = std::min(chunks, std::max<int64_t>(1, a.numel / (kElementsPerPartial * std::max<int64_t>(channels, 1))));
  plan.chunks = chunks;
  plan.chunk_elements = (a.numel + chunks - 1) / chunks;
  plan.scale.resize(channels);
  plan.inv_scale.resize(channels);
  plan.zero_point.resize(channels);
  plan.valid.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const float s = qp.scale[c];
    const float z = qp.zero_point[c];
    plan.valid[c] = learnable_qparams_valid(s, z) ? 1 : 0;
    plan.scale[c] = s;
    plan.inv_scale[c] = inverse_scale(s);
    plan.zero_point[c] = plan.valid[c] ? backward_zero_point(qp, z) : 0.0f;
  }
  return plan;
}

void learnable_backward_cpu_chunk(const LearnableBackwardArgs& a, const LearnableQParams& qp,
                                  const LearnableBackwardPlan& plan, int64_t chunk, double* partial_scale,
                                  double* partial_zero_point) {
  if (plan.reduce) {
    std::fill(partial_scale, partial_scale + plan.channels, 0.0);
    std::fill(partial_zero_point, partial_zero_point + plan.channels, 0.0);
  }
  const int64_t begin = std::min(a.numel, chunk * plan.chunk_elements);
  const int64_t end = std::min(a.numel, begin + plan.chunk_elements);
  if (begin >= end) return;
  backward_chunk_dispatch(a, qp, plan, begin, end, partial_scale, partial_zero_point);
}

void learnable_backward_cpu_finish(const LearnableBackwardArgs& a, const LearnableBackwardPlan& plan,
                                   const double* partial_scale, const double* partial_zero_point) {
  for (int64_t c = 0; c < plan.channels; ++c) {
    double s = 0.0, z = 0.0;
    if (a.numel > 0) {
      for (int64_t k = 0; k < plan.chunks; ++k) {
        s += partial_scale[k * plan.channels + c];
        z += partial_zero_point[k * plan.channels + c];
      }
    }
    if (a.grad_scale != nullptr) a.grad_scale[c] = static_cast<float>(s);
    if (a.grad_zero_point != nullptr) a.grad_zero_point[c] = static_cast<float>(z);
  }
}

void fake_quant_learnable_backward_cpu(const LearnableBackwardArgs& a, const LearnableQParams& qp) {
  const LearnableBackwardPlan plan = plan_learnable_backward_cpu(a, qp);
  std::vector<double> partial_scale(plan.reduce ? plan.chunks * plan.channels : 0);
  std::vector<double> partial_zero_point(partial_scale.size());
  for (int64_t k = 0; k < plan.chunks; ++k) {
    double* ps = plan.reduce ? partial_scale.data() + k * plan.channels : nullptr;
    double* pz = plan.reduce ? partial_zero_point.data() + k * plan.channels : nullptr;
    learnable_backward_cpu_chunk(a, qp, plan, k, ps, pz);
  }
  if (plan.reduce) learnable_backward_cpu_finish(a, plan, partial_scale.data(), partial_zero_point.data());
}

}  // namespace fakequant
