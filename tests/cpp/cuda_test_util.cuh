// Pieces every CUDA GoogleTest file shares: GPU detection and skipping, a device buffer and
// a poisoned, guarded device span, the DType of a storage type, bitwise comparison with the
// first difference reported, test data with the special values of each dtype, and the
// per-tensor and per-channel quant-dequant checks against the CPU reference (every rounding).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "fakequant/cuda/launch.h"
#include "fakequant/fake_quant.h"

// Evaluates expr once (a launch is not repeated to print its error).
#define ASSERT_CUDA(expr)                                                        \
  do {                                                                           \
    const cudaError_t fq_cuda_status_ = (expr);                                  \
    ASSERT_EQ(fq_cuda_status_, cudaSuccess) << cudaGetErrorString(fq_cuda_status_); \
  } while (0)

#define SKIP_WITHOUT_GPU() \
  if (!::fakequant_test::have_gpu()) GTEST_SKIP() << "no CUDA device"

namespace fakequant_test {

inline bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t n) { EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

template <typename T>
constexpr fakequant::DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return fakequant::DType::kFloat32;
  if constexpr (std::is_same_v<T, fakequant::Half>) return fakequant::DType::kFloat16;
  return fakequant::DType::kBFloat16;
}

constexpr int64_t kGuard = 8;              // poisoned elements after each device array
constexpr unsigned char kPoison = 0x7F;    // fp32 3.4e38, fp16/bf16 NaN: shows where unwritten
constexpr unsigned char kMaskPoison = 0xCD;

// Element offsets of the input and the output pointer (an odd offset takes the pointer off
// 16-byte alignment: the kernels' scalar path).
struct Placement {
  int64_t in, out;
};
constexpr Placement kPlacements[] = {{0, 0}, {1, 0}, {0, 1}, {3, 5}};

template <typename T>
uint32_t bits_of(const T& v) {
  uint32_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}

// Bitwise equality, reporting the first difference.
inline std::string hex(uint32_t v) {
  char s[16];
  std::snprintf(s, sizeof(s), "0x%X", v);
  return s;
}

template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& want, const std::vector<T>& got) {
  if (want.size() != got.size()) return ::testing::AssertionFailure() << "sizes " << want.size() << " vs " << got.size();
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&want[i], &got[i], sizeof(T)) != 0) {
      auto f = ::testing::AssertionFailure();
      f << "first difference at element " << i << " of " << want.size() << ": want " << hex(bits_of(want[i]))
        << ", got " << hex(bits_of(got[i]));
      if constexpr (!std::is_same_v<T, uint8_t>) f << " (" << fakequant::to_float(want[i]) << " vs " << fakequant::to_float(got[i]) << ")";
      return f;
    }
  }
  return ::testing::AssertionSuccess();
}

// Scales bit for bit, except that a NaN scale (a channel holding a NaN) only has to be NaN:
// docs/numerics.md makes no promise about the payload of a NaN computed from other values
// (the GPU's conversions and division give the canonical NaN, the CPU keeps the input's).
inline ::testing::AssertionResult same_scales(const std::vector<float>& want, const std::vector<float>& got) {
  std::vector<float> w = want, g = got;
  for (size_t i = 0; i < w.size() && i < g.size(); ++i) {
    if (std::isnan(w[i]) && std::isnan(g[i])) w[i] = g[i] = 0.0f;
  }
  return same_bits(w, g);
}

template <typename T>
bool all_bytes(const std::vector<T>& v, unsigned char byte) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(T); ++i) {
    if (p[i] != byte) return false;
  }
  return true;
}

// `n` elements at `offset` elements into a device allocation of offset + n + kGuard elements,
// every byte poisoned first. download() returns the n elements and fails the test if anything
// around them changed.
template <typename T>
class DeviceSpan {
 public:
  DeviceSpan(int64_t n, int64_t offset, unsigned char poison = kPoison)
      : buf_(static_cast<size_t>(offset + n + kGuard)), n_(n), offset_(offset), poison_(poison) {
    EXPECT_EQ(cudaMemset(buf_.ptr, poison, total_bytes()), cudaSuccess);
  }
  explicit DeviceSpan(const std::vector<T>& v, int64_t offset = 0) : DeviceSpan(static_cast<int64_t>(v.size()), offset) {
    EXPECT_EQ(cudaMemcpy(ptr(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  T* ptr() const { return buf_.ptr + offset_; }
  std::vector<T> download(const char* what) const {
    std::vector<unsigned char> all(total_bytes());
    EXPECT_EQ(cudaMemcpy(all.data(), buf_.ptr, all.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    const size_t first = static_cast<size_t>(offset_) * sizeof(T), end = static_cast<size_t>(offset_ + n_) * sizeof(T);
    for (size_t i = 0; i < all.size(); ++i) {
      if ((i < first || i >= end) && all[i] != poison_) {
        ADD_FAILURE() << what << ": byte " << i << " outside the " << n_ << " elements at offset " << offset_
                      << " was written";
        break;
      }
    }
    std::vector<T> v(static_cast<size_t>(n_));
    if (n_ > 0) std::memcpy(v.data(), all.data() + first, end - first);
    return v;
  }

 private:
  size_t total_bytes() const { return static_cast<size_t>(offset_ + n_ + kGuard) * sizeof(T); }
  DeviceBuffer<T> buf_;
  int64_t n_, offset_;
  unsigned char poison_;
};

template <typename T>
T from_bits(uint32_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Non-finite and extreme values of each dtype, by bit pattern: NaNs of both signs (with
// payloads, a signalling one), +-inf, +-0, the largest finite values, the smallest subnormal.
template <typename T>
std::vector<T> special_values() {
  std::vector<uint32_t> b;
  if constexpr (std::is_same_v<T, float>) {
    b = {0x7FC00000u, 0xFFC01234u, 0x7F800001u, 0x7F800000u, 0xFF800000u, 0x80000000u, 0x00000000u,
         0x7F7FFFFFu, 0xFF7FFFFFu, 0x00000001u};
  } else if constexpr (std::is_same_v<T, fakequant::Half>) {
    b = {0x7E00u, 0xFE01u, 0x7C01u, 0x7C00u, 0xFC00u, 0x8000u, 0x0000u, 0x7BFFu, 0xFBFFu, 0x0001u};
  } else {
    b = {0x7FC0u, 0xFFC1u, 0x7F81u, 0x7F80u, 0xFF80u, 0x8000u, 0x0000u, 0x7F7Fu, 0xFF7Fu, 0x0001u};
  }
  std::vector<T> v;
  for (uint32_t x : b) v.push_back(from_bits<T>(x));
  return v;
}

// n values: normal with standard deviation `spread`, every fourth one an exact multiple of
// tie_step / 2 (ties of the rounding when tie_step is the scale, a power of two), and, from
// 16 elements on, the special values spread over the tensor (first and last element included).
template <typename T>
std::vector<T> test_values(int64_t n, uint32_t seed, float spread, float tie_step) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  std::uniform_int_distribution<int> half_steps(-600, 600);
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    v[i] = fakequant::from_float<T>(i % 4 == 3 ? static_cast<float>(half_steps(rng)) * 0.5f * tie_step : dist(rng));
  }
  if (n >= 16) {
    const std::vector<T> specials = special_values<T>();
    for (size_t k = 0; k < specials.size(); ++k) {
      const int64_t at = k == 0 ? 0 : k == 1 ? n - 1 : static_cast<int64_t>((k * 7919u) % static_cast<size_t>(n));
      v[at] = specials[k];
    }
  }
  return v;
}

// Per-channel qparams of the quant-dequant tests: power-of-two scales (exact ties) on every
// third channel and arbitrary ones elsewhere, float zero points anywhere in [qmin, qmax] and
// the int ones they round to.
struct ChannelQParams {
  std::vector<float> scales, zps_f;
  std::vector<int32_t> zps_i;
};

inline ChannelQParams random_channel_qparams(int64_t channels, uint32_t seed, int32_t qmin, int32_t qmax) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> scale_dist(0.005f, 0.05f);
  std::uniform_real_distribution<float> zp_dist(static_cast<float>(qmin), static_cast<float>(qmax));
  ChannelQParams q{std::vector<float>(channels), std::vector<float>(channels), std::vector<int32_t>(channels)};
  for (int64_t c = 0; c < channels; ++c) {
    q.scales[c] = c % 3 == 0 ? std::ldexp(1.0f, -3 - static_cast<int>(c % 5)) : scale_dist(rng);
    q.zps_f[c] = zp_dist(rng);
    q.zps_i[c] = static_cast<int32_t>(std::lround(q.zps_f[c]));
  }
  return q;
}

// Out-of-contract qparams on the first channels: channel 0 a negative scale, 1 the int zero
// point `bad_int_zp` (outside the range) or a NaN float one, 2 a NaN scale, 3 an infinite
// scale, 4 a subnormal one.
constexpr int kBadChannels = 5;
inline void make_bad_channels(ChannelQParams& q, int32_t bad_int_zp) {
  const float bad_scales[kBadChannels] = {-0.5f, 0.1f, NAN, INFINITY, 1e-39f};
  const int64_t channels = static_cast<int64_t>(q.scales.size());
  for (int64_t c = 0; c < std::min<int64_t>(channels, kBadChannels); ++c) q.scales[c] = bad_scales[c];
  if (channels > 1) q.zps_i[1] = bad_int_zp, q.zps_f[1] = NAN;
}

// The mask a launch wrote equals the CPU's; or, where the launch had no mask, no byte of it
// was written.
inline ::testing::AssertionResult mask_as_launched(const std::vector<uint8_t>& want, const std::vector<uint8_t>& got,
                                                   bool with_mask) {
  if (with_mask) return same_bits(want, got);
  for (uint8_t b : got) {
    if (b != kMaskPoison) return ::testing::AssertionFailure() << "mask written although null";
  }
  return ::testing::AssertionSuccess();
}

struct TensorQParams {
  float scale;
  int32_t zero_point, quant_min, quant_max;
};

// The per-tensor launch against the CPU reference on the same qparams, bit for bit, the input
// left alone. seed: the two seed words on the host for Rounding::kStochastic, else null.
// enabled: the `enabled` switch (none: no switch). with_mask: whether the launch gets a mask.
template <typename T>
void check_per_tensor_against_cpu(int64_t n, Placement at, const TensorQParams& q, fakequant::Rounding mode,
                                  const int64_t* seed, std::optional<int64_t> enabled, bool with_mask) {
  namespace fq = fakequant;
  const float spread = static_cast<float>(q.quant_max - q.quant_min) * q.scale * 0.4f;
  const std::vector<T> x = test_values<T>(n, static_cast<uint32_t>(n * 7 + at.in * 3 + at.out), spread, q.scale);
  const int64_t enabled_value = enabled.value_or(1);
  std::vector<T> y_cpu(n);
  std::vector<uint8_t> m_cpu(fq::mask_bytes(n));
  fq::fake_quant_per_tensor_cpu({dtype_of<T>(), x.data(), y_cpu.data(), m_cpu.data(), n},
                                {&q.scale, &q.zero_point, q.quant_min, q.quant_max, mode, seed,
                                 enabled ? &enabled_value : nullptr});

  DeviceSpan<T> dx(x, at.in), dy(n, at.out);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  DeviceSpan<float> ds(std::vector<float>{q.scale});
  DeviceSpan<int32_t> dz(std::vector<int32_t>{q.zero_point});
  DeviceSpan<int64_t> dseed(seed ? std::vector<int64_t>(seed, seed + 2) : std::vector<int64_t>{});
  DeviceSpan<int64_t> de(std::vector<int64_t>{enabled_value});
  ASSERT_CUDA(fq::cuda::launch_fake_quant_per_tensor(
      {dtype_of<T>(), dx.ptr(), dy.ptr(), with_mask ? dm.ptr() : nullptr, n},
      {ds.ptr(), dz.ptr(), q.quant_min, q.quant_max, mode, seed ? dseed.ptr() : nullptr, enabled ? de.ptr() : nullptr},
      nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const auto where = [&] {
    ::testing::Message m;
    m << fq::dtype_name(dtype_of<T>()) << " n=" << n << " offsets=" << at.in << "/" << at.out << " "
      << fq::rounding_name(mode) << " scale=" << q.scale << " zp=" << q.zero_point << " range=[" << q.quant_min
      << "," << q.quant_max << "]";
    if (seed) m << " seed=" << seed[0] << "," << seed[1];
    return m << " enabled=" << (enabled ? std::to_string(*enabled) : "none") << " with_mask=" << with_mask;
  };
  ASSERT_TRUE(same_bits(y_cpu, dy.download("output"))) << where();
  ASSERT_TRUE(mask_as_launched(m_cpu, dm.download("mask"), with_mask)) << where();
  ASSERT_TRUE(same_bits(x, dx.download("input"))) << where();  // the input is left alone
}

// Memory [outer][channels][inner]: channel_stride = inner. outer 1 is the channel axis
// outermost; inner 1 the channel innermost (channels_last along C); both > 1 a middle axis.
struct ChannelLayout {
  int64_t outer, channels, inner;
};

// One per-channel quant-dequant case. seed: the two seed words on the host for
// Rounding::kStochastic, else null. bad_int_zp: where set, the first channels are out of
// contract (make_bad_channels) with this int zero point. with_mask: whether the launch gets a
// mask to write.
struct PerChannelCase {
  ChannelLayout layout;
  Placement at;
  fakequant::Rounding rounding;
  const int64_t* seed;
  bool float_zp;
  int32_t qmin, qmax;
  std::optional<int64_t> enabled;
  std::optional<int32_t> bad_int_zp;
  bool with_mask;
};

// The per-channel launch against the CPU reference on the same qparams, bit for bit.
template <typename T>
void check_per_channel_against_cpu(const PerChannelCase& c) {
  namespace fq = fakequant;
  const ChannelLayout l = c.layout;
  const Placement at = c.at;
  const int64_t n = l.outer * l.channels * l.inner;
  const int64_t channels = l.channels;
  ChannelQParams q =
      random_channel_qparams(channels, static_cast<uint32_t>(channels * 31 + n + at.in * 5 + at.out), c.qmin, c.qmax);
  if (c.bad_int_zp) make_bad_channels(q, *c.bad_int_zp);
  const float spread = static_cast<float>(c.qmax - c.qmin) * 0.02f;
  const std::vector<T> x = test_values<T>(n, static_cast<uint32_t>(n * 3 + channels + at.in), spread, 0.125f);
  const int64_t enabled_value = c.enabled.value_or(1);

  fq::PerChannelQParams qp;
  qp.scale = q.scales.data();
  qp.zero_point = c.float_zp ? static_cast<const void*>(q.zps_f.data()) : static_cast<const void*>(q.zps_i.data());
  qp.zero_point_type = c.float_zp ? fq::ZeroPointType::kFloat32 : fq::ZeroPointType::kInt32;
  qp.channels = channels;
  qp.channel_stride = l.inner;
  qp.quant_min = c.qmin;
  qp.quant_max = c.qmax;
  qp.rounding = c.rounding;
  qp.seed = c.seed;
  qp.enabled = c.enabled ? &enabled_value : nullptr;
  std::vector<T> y_cpu(n);
  std::vector<uint8_t> m_cpu(fq::mask_bytes(n));
  fq::fake_quant_per_channel_cpu({dtype_of<T>(), x.data(), y_cpu.data(), m_cpu.data(), n}, qp);

  DeviceSpan<T> dx(x, at.in), dy(n, at.out);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  DeviceSpan<float> ds(q.scales), dzf(q.zps_f);
  DeviceSpan<int32_t> dzi(q.zps_i);
  DeviceSpan<int64_t> dseed(c.seed ? std::vector<int64_t>(c.seed, c.seed + 2) : std::vector<int64_t>{});
  DeviceSpan<int64_t> de(std::vector<int64_t>{enabled_value});
  fq::PerChannelQParams dqp = qp;
  dqp.scale = ds.ptr();
  dqp.zero_point = c.float_zp ? static_cast<const void*>(dzf.ptr()) : static_cast<const void*>(dzi.ptr());
  dqp.seed = c.seed ? dseed.ptr() : nullptr;
  dqp.enabled = c.enabled ? de.ptr() : nullptr;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_per_channel(
      {dtype_of<T>(), dx.ptr(), dy.ptr(), c.with_mask ? dm.ptr() : nullptr, n}, dqp, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const auto where = [&] {
    ::testing::Message m;
    m << fq::dtype_name(dtype_of<T>()) << " " << l.outer << "x" << l.channels << "x" << l.inner
      << " offsets=" << at.in << "/" << at.out << " " << fq::rounding_name(c.rounding);
    if (c.seed) m << " seed=" << c.seed[0] << "," << c.seed[1];
    return m << " float_zp=" << c.float_zp << " range=[" << c.qmin << "," << c.qmax << "]"
             << " enabled=" << (c.enabled ? std::to_string(*c.enabled) : "none")
             << " bad_channels=" << c.bad_int_zp.has_value() << " with_mask=" << c.with_mask;
  };
  ASSERT_TRUE(same_bits(y_cpu, dy.download("output"))) << where();
  ASSERT_TRUE(mask_as_launched(m_cpu, dm.download("mask"), c.with_mask)) << where();
}

}  // namespace fakequant_test
