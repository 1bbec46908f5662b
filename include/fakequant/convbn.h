// ConvBN fake quantization, "forward fused, backward unfused" (docs/convbn.md): the kernels
// around the convolutions. The convolutions themselves are the caller's (ATen / cuDNN); this
// library provides
//
//   * per-channel batch moments of an activation (shifted sums in double),
//   * per-channel folding math (fold scale, BN epilogue coefficients, running-stat update,
//     the coefficients of the BN backward and the parameter gradients), one FQ_HD function
//     per channel shared by the CPU and CUDA paths (convbn_channel below),
//   * the weight fold W * s (its fake quantization is fake_quant_weight_abs_max),
//   * the forward epilogue y = z * A[c] + B[c] (+ ReLU, 1-bit ReLU mask),
//   * the backward reduction (sum g, sum g * (z - mean)) and elementwise pass
//     dz = K[c] * (g - MG[c] - (z - M[c]) * AX[c]), g = dy * relu bit,
//   * the weight-gradient tail dW = dW_conv * mask * s with sum(dW_conv * mask * W) per channel.
//
// CPU reference here; CUDA launchers in <fakequant/cuda/convbn.h>.
//
// Activations are N x C x (H*W) tensors in one of two dense layouts, described by
// ActivationLayout: numel = outer * channels * inner and the channel of memory offset i is
// (i / inner) % channels. NCHW: outer = N, inner = H*W; NHWC (channels_last): outer = N*H*W,
// inner = 1. Weights are contiguous [C_out, L] (L = C_in/groups * kh * kw).
#pragma once

#include <cmath>
#include <cstdint>

#include "fakequant/dispatch.h"
#include "fakequant/fake_quant.h"

namespace fakequant {

// Activation element types. float64 exists for gradient checks; 16-bit types compute in
// float32, float64 in double ("Acc" below: float, or double for kFloat64).
enum class ConvBnDType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// f(T{}) with T the storage type of `dtype` (float, Half, BFloat16, double): the ConvBN kernels'
// dtype switch, on the CPU and in the CUDA launchers; fallback for a value outside the enum.
template <typename Result, typename F>
Result dispatch_convbn_dtype(ConvBnDType dtype, Result fallback, F&& f) {
  switch (dtype) {
    case ConvBnDType::kFloat32:
      return f(float{});
    case ConvBnDType::kFloat16:
      return f(Half{});
    case ConvBnDType::kBFloat16:
      return f(BFloat16{});
    case ConvBnDType::kFloat64:
      return f(double{});
  }
  return fallback;
}

template <typename F>
void dispatch_convbn_dtype(ConvBnDType dtype, F&& f) {
  dispatch_convbn_dtype(dtype, 0, discard_result(f));
}

struct ActivationLayout {
  int64_t outer = 0;
  int64_t channels = 1;
  int64_t inner = 1;
  FQ_HD int64_t numel() const { return outer * channels * inner; }
  FQ_HD int64_t per_channel() const { return outer * inner; }
};

// Rows of the per-channel state saved for backward: double [kConvBnRows, C].
enum ConvBnRow : int32_t {
  kRowMean = 0,   // mean of the saved pre-BN activation z (0 in eval)
  kRowAlpha = 1,  // xhat = (z - mean) * alpha (0 in eval)
  kRowK = 2,      // dz = K * (g - mean(g) - xhat * mean(g * xhat)) (1 in eval)
  kRowScale = 3,  // fold scale s: the weight is quantised as Q(W * s)
  kRowR = 4,      // ds/dgamma (1/sqrt(running_var + eps)); 0 where s is held constant
  kRowE = 5,      // running: ds = sum_W + E * sum(g * xhat); eval: ds = sum_W + E * sum(g)
  kConvBnRows = 6,
};

enum class ConvBnPhase : int32_t {
  kEval = 0,            // rows + epilogue from running stats (training=False, both modes)
  kRunningPreFold = 1,  // training, running mode, before the convolution: s and r
  kRunningStats = 2,    // ... after it: rows + epilogue from the moments of u, stats update
  kBatchStats = 3,      // training, batch mode: rows + epilogue from the moments of z, stats update
  kBackwardCoef = 4,    // backward: coefficients of the elementwise pass from the sums
  kBackwardParams = 5,  // backward: grad gamma / beta / bias
};

// Per-channel pass (all pointers in the data's memory space; [C] unless said otherwise).
struct ConvBnChannelArgs {
  ConvBnPhase phase = ConvBnPhase::kEval;
  bool training = true;
  ConvBnDType dtype = ConvBnDType::kFloat32;  // activation dtype: `coef` is Acc
  int64_t channels = 0;
  double count = 0;  // elements per channel of the activation (N * H_out * W_out)
  double eps = 1e-5;
  double momentum = 0.1;
  const double* gamma = nullptr;
  const double* beta = nullptr;
  const double* bias = nullptr;  // conv bias, or null (0)
  float* running_mean = nullptr;  // read (eval, pre-fold), updated (stats phases)
  float* running_var = nullptr;
  const double* mean = nullptr;  // moments (stats phases)
  const double* var = nullptr;
  double* rows = nullptr;         // [kConvBnRows, C]: written forward, read backward
  void* coef = nullptr;           // Acc: epilogue [2, C] (A, B); backward [4, C] (K, MG, M, AX)
  const double* sums = nullptr;   // backward: [2, C] sum(g), sum(g * (z - mean))
  const double* weight_sums = nullptr;  // backward params: sum_W(dW_conv * mask * W), or null (0)
  double* grads = nullptr;        // backward params: [3, C] grad gamma, beta, bias
};

// Per-channel moments: mean and biased variance of each channel of `input`, from shifted
// sums in double (shift = the channel's first element), written to mean / var (double [C]).
struct ChannelMomentsArgs {
  ConvBnDType dtype = ConvBnDType::kFloat32;
  const void* input = nullptr;
  ActivationLayout layout;
  double* mean = nullptr;
  double* var = nullptr;
};

// Backward sums per channel: sums[c] = sum g, sums[C + c] = sum g * (z - mean[c]), with
// g = grad_output * relu bit. pre_bn may be null (then only sum g; the second row is 0).
struct ChannelGradSumsArgs {
  ConvBnDType dtype = ConvBnDType::kFloat32;
  const void* grad_output = nullptr;
  const void* pre_bn = nullptr;
  const uint8_t* relu_mask = nullptr;  // or null (no ReLU)
  const double* mean = nullptr;        // rows + kRowMean * C
  ActivationLayout layout;
  double* sums = nullptr;  // [2, C]
};

// output = input * A[c] + B[c] in Acc; with relu_mask non-null, output = max(output, 0)
// (NaN passes) and bit i of the mask = output > 0. output may alias input.
struct ConvBnEpilogueArgs {
  ConvBnDType dtype = ConvBnDType::kFloat32;
  const void* input = nullptr;
  void* output = nullptr;
  uint8_t* relu_mask = nullptr;
  const void* coef = nullptr;  // Acc [2, C]
  ActivationLayout layout;
};

// grad_pre_bn = K[c] * (g - MG[c] - (z - M[c]) * AX[c]) in Acc, g = grad_output * relu bit.
// pre_bn may be null when AX is 0 (eval).
struct ConvBnBackwardArgs {
  ConvBnDType dtype = ConvBnDType::kFloat32;
  const void* grad_output = nullptr;
  const void* pre_bn = nullptr;
  const uint8_t* relu_mask = nullptr;
  const void* coef = nullptr;  // Acc [4, C]
  void* grad_pre_bn = nullptr;
  ActivationLayout layout;
};

// A ConvBnBackwardArgs' buffers in storage type T, the coefficients in T's compute type
// (AccOf): what the CPU and CUDA backward kernels read and write.
template <typename T>
struct ConvBnBackwardBuffers {
  const T* grad_output;
  const T* pre_bn;
  T* grad_pre_bn;
  const typename AccOf<T>::type* coef;
};

template <typename T>
inline ConvBnBackwardBuffers<T> typed_buffers(const ConvBnBackwardArgs& a) {
  return {static_cast<const T*>(a.grad_output), static_cast<const T*>(a.pre_bn), static_cast<T*>(a.grad_pre_bn),
          static_cast<const typename AccOf<T>::type*>(a.coef)};
}

// folded[c, j] = weight[c, j] * s[c]: float32 for float32/16-bit weights (s rounded to
// float32 first, one float32 product), double for float64 weights.
struct FoldWeightArgs {
  ConvBnDType dtype = ConvBnDType::kFloat32;  // of weight
  const void* weight = nullptr;
  void* folded = nullptr;
  const double* scale = nullptr;  // rows + kRowScale * C
  int64_t channels = 0;
  int64_t channel_length = 0;
};

// grad_weight = grad_conv * mask bit * s[c] (s null: 1; mask null: every bit set);
// weight_sums[c] = sum_j grad_conv * mask bit * weight (double; skipped when null).
// grad_conv, weight and grad_weight share `dtype`.
struct WeightGradArgs {
  ConvBnDType dtype = ConvBnDType::kFloat32;
  const void* grad_conv = nullptr;
  const void* weight = nullptr;
  const uint8_t* mask = nullptr;
  const double* scale = nullptr;
  void* grad_weight = nullptr;
  double* weight_sums = nullptr;
  int64_t channels = 0;
  int64_t channel_length = 0;
};

// ---------------------------------------------------------------------------------------
// The per-channel pass: the formulas are quant_math.h's convbn_* functions; this stores them.

FQ_HD void convbn_store_acc(void* p, ConvBnDType dtype, int64_t i, double v) {
  if (dtype == ConvBnDType::kFloat64) {
    static_cast<double*>(p)[i] = v;
  } else {
    static_cast<float*>(p)[i] = static_cast<float>(v);
  }
}

FQ_HD void convbn_store_fold(const ConvBnChannelArgs& a, int64_t c, const ConvBnFold& f) {
  const int64_t C = a.channels;
  a.rows[kRowMean * C + c] = f.mean;
  a.rows[kRowAlpha * C + c] = f.alpha;
  a.rows[kRowK * C + c] = f.k;
  a.rows[kRowScale * C + c] = f.scale;
  a.rows[kRowR * C + c] = f.r;
  a.rows[kRowE * C + c] = f.e;
  convbn_store_acc(a.coef, a.dtype, c, f.a);
  convbn_store_acc(a.coef, a.dtype, C + c, f.b);
}

FQ_HD void convbn_channel(const ConvBnChannelArgs& a, int64_t c) {
  const int64_t C = a.channels;
  double* rows = a.rows;
  const double bias = a.bias != nullptr ? a.bias[c] : 0.0;
  switch (a.phase) {
    case ConvBnPhase::kEval:
      convbn_store_fold(a, c, convbn_fold_eval(a.gamma[c], a.beta[c], bias, a.running_mean[c], a.running_var[c], a.eps));
      break;
    case ConvBnPhase::kRunningPreFold: {
      const ConvBnFold f = convbn_fold_running_scale(a.gamma[c], a.running_var[c], a.eps);
      rows[kRowScale * C + c] = f.scale;
      rows[kRowR * C + c] = f.r;
      break;
    }
    case ConvBnPhase::kRunningStats: {
      ConvBnFold f = convbn_fold_running(rows[kRowScale * C + c], a.gamma[c], a.beta[c], a.mean[c], a.var[c], a.eps);
      f.r = rows[kRowR * C + c];
      convbn_store_fold(a, c, f);
      const double s = f.scale;
      a.running_mean[c] = convbn_running_update(a.running_mean[c], a.mean[c] / s + bias, a.momentum);
      a.running_var[c] = convbn_running_update(a.running_var[c], convbn_unbiased((a.var[c] / s) / s, a.count), a.momentum);
      break;
    }
    case ConvBnPhase::kBatchStats:
      convbn_store_fold(a, c, convbn_fold_batch(a.gamma[c], a.beta[c], a.mean[c], a.var[c], a.eps));
      a.running_mean[c] = convbn_running_update(a.running_mean[c], a.mean[c] + bias, a.momentum);
      a.running_var[c] = convbn_running_update(a.running_var[c], convbn_unbiased(a.var[c], a.count), a.momentum);
      break;
    case ConvBnPhase::kBackwardCoef: {
      // Training: dz = K (g - mean(g) - xhat mean(g xhat)), xhat = (z - M) alpha; eval: dz = g.
      const double n = a.count;
      const double alpha = rows[kRowAlpha * C + c];
      const double mg = a.training ? a.sums[c] / n : 0.0;
      const double mgx = a.training ? alpha * a.sums[C + c] / n : 0.0;
      convbn_store_acc(a.coef, a.dtype, c, rows[kRowK * C + c]);
      convbn_store_acc(a.coef, a.dtype, C + c, mg);
      convbn_store_acc(a.coef, a.dtype, 2 * C + c, rows[kRowMean * C + c]);
      convbn_store_acc(a.coef, a.dtype, 3 * C + c, alpha * mgx);
      break;
    }
    case ConvBnPhase::kBackwardParams: {
      const ConvBnParamGrads g = convbn_param_grads(
          a.training, a.sums[c], rows[kRowAlpha * C + c] * a.sums[C + c],
          a.weight_sums != nullptr ? a.weight_sums[c] : 0.0, rows[kRowScale * C + c], rows[kRowR * C + c],
          rows[kRowE * C + c]);
      a.grads[c] = g.gamma;
      a.grads[C + c] = g.beta;
      a.grads[2 * C + c] = g.bias;
      break;
    }
  }
}

// --- CPU reference --------------------------------------------------------------------
// Partial sums over the elements [begin, end) of memory order (any split), accumulated into
// s1/s2 ([C] each, double, start from zeros); merge partials by adding, then
// convbn_moments_finish_cpu. The shift of channel c is its first element.
void channel_moment_sums_cpu(const ChannelMomentsArgs& a, int64_t begin, int64_t end, double* s1, double* s2);
void channel_moments_finish_cpu(const ChannelMomentsArgs& a, const double* s1, const double* s2);
void channel_moments_cpu(const ChannelMomentsArgs& a);

// Backward sums over [begin, end) into sums ([2, C], start from zeros).
void channel_grad_sums_cpu_range(const ChannelGradSumsArgs& a, int64_t begin, int64_t end, double* sums);
void channel_grad_sums_cpu(const ChannelGradSumsArgs& a);

// Elementwise passes over mask groups [group_begin, group_end) (group g = elements [8g, 8g+8)).
void convbn_epilogue_cpu_range(const ConvBnEpilogueArgs& a, int64_t group_begin, int64_t group_end);
void convbn_epilogue_cpu(const ConvBnEpilogueArgs& a);
void convbn_backward_cpu_range(const ConvBnBackwardArgs& a, int64_t group_begin, int64_t group_end);
void convbn_backward_cpu(const ConvBnBackwardArgs& a);

// Weight passes over channels [c_begin, c_end).
void fold_weight_cpu_range(const FoldWeightArgs& a, int64_t c_begin, int64_t c_end);
void fold_weight_cpu(const FoldWeightArgs& a);
void weight_grad_cpu_range(const WeightGradArgs& a, int64_t c_begin, int64_t c_end);
void weight_grad_cpu(const WeightGradArgs& a);

void convbn_channels_cpu(const ConvBnChannelArgs& a);

}  // namespace fakequant
