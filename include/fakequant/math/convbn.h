// ConvBN folding: the per-channel formulas in double.
// Part of fakequant's scalar math (fakequant/quant_math.h); the contract is docs/numerics.md.
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/learnable.h"

namespace fakequant {

// ConvBN folding (docs/convbn.md): per-channel formulas in double, shared by the CPU loop
// and the CUDA kernel of the ConvBN op (fakequant/convbn.h). s is the fold scale (the weight
// is quantised as Q(W * s)); the output before ReLU is y = u * a + b with u the convolution
// of the fold; backward: xhat = (z - mean) * alpha for the saved pre-BN activation z,
// dz = k * (g - mean(g) - xhat * mean(g * xhat)); ds/dgamma = r; e enters ds (below).

struct ConvBnFold {
  double mean, alpha, k, scale, r, e, a, b;
};

struct ConvBnParamGrads {
  double gamma, beta, bias;
};

FQ_HD double convbn_rsqrt(double v) { return 1.0 / sqrt(v); }

// nn.BatchNorm2d's running update: (1 - momentum) * running + momentum * batch.
FQ_HD float convbn_running_update(float running, double batch, double momentum) {
  return static_cast<float>((1.0 - momentum) * static_cast<double>(running) + momentum * batch);
}

// The unbiased variance BatchNorm2d keeps: var * n / (n - 1).
FQ_HD double convbn_unbiased(double biased_var, double n) { return biased_var * (n / (n - 1.0)); }

// Mean and biased variance from shifted sums s1 = sum (x - shift), s2 = sum (x - shift)^2.
FQ_HD void convbn_moments_from_sums(double shift, double s1, double s2, double n, double* mean, double* var) {
  const double d = s1 / n;
  const double v = s2 / n - d * d;
  *mean = shift + d;
  *var = v > 0.0 ? v : 0.0;
}

// Eval / frozen BN, both modes: s = gamma / sigma_run,
// y = conv(x, Q(W * s)) + beta + s * (bias - running_mean); e = bias - running_mean.
FQ_HD ConvBnFold convbn_fold_eval(double gamma, double beta, double bias, float running_mean, float running_var,
                                  double eps) {
  const double r = convbn_rsqrt(static_cast<double>(running_var) + eps);
  const double s = gamma * r;
  const double e = bias - static_cast<double>(running_mean);
  return {0.0, 0.0, 1.0, s, r, e, 1.0, beta + s * e};
}

// Training, running mode, before the convolution: s = gamma / sigma_run. A channel with
// gamma == 0 would divide 0 by 0 below (PyTorch's ConvBn2d gives NaN, pytorch#77434): it
// folds with s = 1 instead, held constant (r = 0), and its output is beta.
FQ_HD ConvBnFold convbn_fold_running_scale(double gamma, float running_var, double eps) {
  const double r = convbn_rsqrt(static_cast<double>(running_var) + eps);
  const bool zero = gamma == 0.0;
  return {0.0, 0.0, 0.0, zero ? 1.0 : gamma * r, zero ? 0.0 : r, 0.0, 0.0, 0.0};
}

// ... after it, from the moments of u = conv(x, Q(W * s)): c = u / s + bias has
// mu_c = mean_u / s + bias, var_c = var_u / s^2, and y = gamma (c - mu_c) / sigma_c + beta
// = u * (k / s) + beta - k * mean_u / s with k = gamma / sigma_c. The division by s adds
// -gamma * eps * sum(g xhat) / ((var_c + eps) s) to ds (e is that factor). r is the caller's.
FQ_HD ConvBnFold convbn_fold_running(double s, double gamma, double beta, double mean_u, double var_u, double eps) {
  const double var_c = (var_u / s) / s;
  const double invstd = convbn_rsqrt(var_c + eps);
  const double k = gamma * invstd;
  const double e = gamma == 0.0 ? 0.0 : -gamma * eps / ((var_c + eps) * s);
  return {mean_u, invstd / s, k / s, s, 0.0, e, k / s, beta - k * (mean_u / s)};
}

// Training, batch mode, from the moments of z = conv(x, W) (no bias; the bias cancels):
// s = gamma / sigma_B, y = conv(x, Q(W * s)) + beta - s * mu_B.
FQ_HD ConvBnFold convbn_fold_batch(double gamma, double beta, double mean, double var, double eps) {
  const double invstd = convbn_rsqrt(var + eps);
  const double s = gamma * invstd;
  return {mean, invstd, s, s, 0.0, 0.0, 1.0, beta - s * mean};
}

// Gradients of gamma, beta and the conv bias from sum g, sum g * xhat and
// sum_w = sum_W(dW_conv * mask * W) (the fold's share of ds).
FQ_HD ConvBnParamGrads convbn_param_grads(bool training, double sum_g, double sum_gx, double sum_w, double s,
                                          double r, double e) {
  if (!training) return {(sum_w + e * sum_g) * r, sum_g, s * sum_g};
  // Training BN removes the conv bias from the output: its gradient is 0. Batch mode: r = 0.
  return {sum_gx + (sum_w + e * sum_gx) * r, sum_g, 0.0};
}

}  // namespace fakequant
