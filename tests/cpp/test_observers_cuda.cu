// CUDA reductions and fused observers (fakequant/cuda/observers.h) against the CPU reference,
// bit for bit: every launcher on every layout (per tensor, channels first, channels last, mid
// axis), all three dtypes, misaligned inputs, empty and one-element inputs, NaN and +-inf, with
// outputs poisoned before each launch and every state buffer compared after every step.
// Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fakequant/cuda/observers.h"
#include "fakequant/observers.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using fq::cuda::ReduceStage1;
using namespace fakequant_test;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

const char* dtype_label(fq::DType d) {
  return d == fq::DType::kFloat32 ? "f32" : (d == fq::DType::kFloat16 ? "f16" : "bf16");
}

size_t element_bytes(fq::DType d) { return d == fq::DType::kFloat32 ? 4 : 2; }

uint32_t float_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// Equal bit for bit, except that any NaN matches any NaN (a NaN computed from other values
// carries no promise about its payload, docs/numerics.md).
::testing::AssertionResult same_floats(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && std::isnan(want[i])) continue;
    if (float_bits(got[i]) != float_bits(want[i])) {
      return ::testing::AssertionFailure() << "element " << i << ": got " << got[i] << " (0x" << std::hex
                                           << float_bits(got[i]) << "), want " << want[i] << " (0x"
                                           << float_bits(want[i]) << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same_bytes(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want,
                                      size_t element) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) return ::testing::AssertionFailure() << "first difference in element " << i / element;
  }
  return ::testing::AssertionSuccess();
}

// Where the specials go: none, +-inf only, or NaN, +inf and -inf.
enum class Specials { kNone, kInf, kNaNInf };

// Parts of the test names: the specials, the rounding, an [outer, channels, inner] shape.
const char* specials_suffix(Specials s) {
  return s == Specials::kNaNInf ? "_nan_inf" : (s == Specials::kInf ? "_inf" : "");
}

const char* rounding_label(fq::Rounding r) { return r == fq::Rounding::kHalfAway ? "half_away" : "half_even"; }

template <typename Case>
std::string shape_label(const Case& c) {
  return std::to_string(c.outer) + "x" + std::to_string(c.channels) + "x" + std::to_string(c.inner);
}

// Random fp32 values (normal, times `magnitude`), with specials at fixed offsets.
std::vector<float> random_values(int64_t n, uint32_t seed, float magnitude, Specials specials) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.25f, 2.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(rng) * magnitude;
  if (specials != Specials::kNone && n > 0) {
    v[n / 2] = kInf;
    v[(2 * n) / 3] = -kInf;
    if (specials == Specials::kNaNInf) v[n / 3] = kNaN;
  }
  return v;
}

// A host tensor of one dtype, made from fp32 values rounded to it.
struct HostTensor {
  fq::DType dtype = fq::DType::kFloat32;
  int64_t numel = 0;
  std::vector<unsigned char> bytes;
};

HostTensor host_tensor(fq::DType dtype, const std::vector<float>& v) {
  HostTensor t;
  t.dtype = dtype;
  t.numel = static_cast<int64_t>(v.size());
  t.bytes.resize(v.size() * element_bytes(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    unsigned char* p = t.bytes.data() + i * element_bytes(dtype);
    if (dtype == fq::DType::kFloat32) {
      std::memcpy(p, &v[i], 4);
    } else if (dtype == fq::DType::kFloat16) {
      const fq::Half h = fq::from_float<fq::Half>(v[i]);
      std::memcpy(p, &h, 2);
    } else {
      const fq::BFloat16 b = fq::from_float<fq::BFloat16>(v[i]);
      std::memcpy(p, &b, 2);
    }
  }
  return t;
}

// Device bytes `offset` elements past a cudaMalloc'ed (256-byte aligned) start: offset 1
// makes the pointer miss 16-byte alignment.
struct DeviceTensor {
  unsigned char* base = nullptr;
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceTensor(fq::DType dtype, int64_t numel, int64_t offset) : bytes(numel * element_bytes(dtype)) {
    const size_t skip = offset * element_bytes(dtype);
    EXPECT_EQ(cudaMalloc(&base, std::max<size_t>(skip + bytes, 1)), cudaSuccess);
    ptr = base + skip;
  }
  ~DeviceTensor() { cudaFree(base); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  void upload(const HostTensor& t) {
    EXPECT_EQ(cudaMemcpy(ptr, t.bytes.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  void poison() {
    if (bytes > 0) EXPECT_EQ(cudaMemset(ptr, 0x5A, bytes), cudaSuccess);
  }
  std::vector<unsigned char> read() const {
    std::vector<unsigned char> v(bytes);
    EXPECT_EQ(cudaMemcpy(v.data(), ptr, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

// A small device array mirrored from / to a host vector.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(const std::vector<T>& v) : n(v.size()) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    write(v);
  }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void write(const std::vector<T>& v) {
    EXPECT_EQ(v.size(), n);
    if (n > 0) EXPECT_EQ(cudaMemcpy(ptr, v.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> read() const {
    std::vector<T> v(n);
    if (n > 0) EXPECT_EQ(cudaMemcpy(v.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

// The quant-dequant outputs of one launch: output bytes and mask, poisoned before the launch.
struct DeviceOutputs {
  DeviceTensor y;
  DeviceArray<uint8_t> mask;
  DeviceOutputs(fq::DType dtype, int64_t numel, int64_t offset)
      : y(dtype, numel, offset), mask(std::vector<uint8_t>(fq::mask_bytes(numel), 0xA5)) {}
  void poison() {
    y.poison();
    mask.write(std::vector<uint8_t>(mask.n, 0xA5));
  }
};

struct HostOutputs {
  std::vector<unsigned char> y;
  std::vector<uint8_t> mask;
  HostOutputs(fq::DType dtype, int64_t numel) : y(numel * element_bytes(dtype)), mask(fq::mask_bytes(numel)) {}
  fq::FakeQuantArgs args(const HostTensor& x) { return {x.dtype, x.bytes.data(), y.data(), mask.data(), x.numel}; }
};

void expect_outputs_match(const DeviceOutputs& gpu, const HostOutputs& cpu, fq::DType dtype, const std::string& where) {
  EXPECT_TRUE(same_bytes(gpu.y.read(), cpu.y, element_bytes(dtype))) << where << ": output";
  EXPECT_EQ(gpu.mask.read(), cpu.mask) << where << ": mask";
}

// Every element NaN and every mask bit 0.
void expect_poisoned(const DeviceOutputs& out, int64_t n, const std::string& where) {
  const std::vector<unsigned char> y = out.y.read();
  for (int64_t i = 0; i < n; ++i) {
    float v;
    std::memcpy(&v, y.data() + 4 * i, 4);
    ASSERT_TRUE(std::isnan(v)) << where << ": element " << i;
  }
  for (uint8_t b : out.mask.read()) ASSERT_EQ(b, 0) << where;
}

// Paddle abs-max quant-dequant on the CPU: step scale / bin_cnt, zero point 0, [-bin_cnt, bin_cnt].
void abs_max_quant_dequant_cpu(const fq::FakeQuantArgs& args, float scale, int32_t bits, fq::Rounding rounding) {
  const int32_t bin_cnt = fq::abs_max_bin_cnt(bits);
  const float step = fq::abs_max_step(scale, bin_cnt);
  const int32_t zero_point = 0;
  fq::PerTensorQParams qp;
  qp.scale = &step;
  qp.zero_point = &zero_point;
  qp.quant_min = -bin_cnt;
  qp.quant_max = bin_cnt;
  qp.rounding = rounding;
  fq::fake_quant_per_tensor_cpu(args, qp);
}

// The abs-max the CPU binding reduces a batch to.
float abs_max_cpu(const HostTensor& x) {
  float abs_max = 0.0f;
  fq::reduce_cpu({x.dtype, x.bytes.data(), x.numel}, fq::ReduceKind::kAbsMax, &abs_max, nullptr);
  return abs_max;
}

// What an observer launch needs on the device: the input (`offset` elements off alignment),
// the outputs and the workspace.
struct ObserverLaunch {
  DeviceTensor x;
  DeviceOutputs out;
  DeviceBuffer<unsigned char> ws;
  ObserverLaunch(fq::DType dtype, int64_t numel, int64_t offset, int64_t channels = 1, int64_t channel_stride = 1)
      : x(dtype, numel, offset),
        out(dtype, numel, offset),
        ws(fq::cuda::observer_workspace_bytes({dtype, x.ptr, numel, channels, channel_stride})) {}
  // Uploads the batch, poisons the outputs and returns the launch's arguments.
  fq::FakeQuantArgs prepare(const HostTensor& batch) {
    x.upload(batch);
    out.poison();
    return {batch.dtype, x.ptr, out.y.ptr, out.mask.ptr, batch.numel};
  }
};

// The state of an observer twice: on the host, where the CPU reference updates it, and on the
// device, where the launches update it; expect_device_matches compares the two.
struct MovingAverageAbsMaxMirror {
  static constexpr float kMovingRate = 0.9f;
  float scale, state, accum;
  DeviceArray<float> d_scale, d_state, d_accum;
  MovingAverageAbsMaxMirror(float scale0, float state0, float accum0)
      : scale(scale0), state(state0), accum(accum0), d_scale({scale0}), d_state({state0}), d_accum({accum0}) {}
  float update_cpu(float abs_max) {
    return fq::moving_average_abs_max_update_cpu({&scale, &state, &accum, kMovingRate}, abs_max);
  }
  cudaError_t launch(const fq::FakeQuantArgs& args, int32_t bits, fq::Rounding rounding, bool training,
                     void* ws) const {
    return fq::cuda::launch_fake_quant_moving_average_abs_max(
        args, {d_scale.ptr, d_state.ptr, d_accum.ptr, kMovingRate}, bits, rounding, training, ws, nullptr);
  }
  void expect_device_matches(const std::string& where) const {
    EXPECT_TRUE(same_floats(d_scale.read(), {scale})) << where << ": scale";
    EXPECT_TRUE(same_floats(d_state.read(), {state})) << where << ": state";
    EXPECT_TRUE(same_floats(d_accum.read(), {accum})) << where << ": accum";
  }
};

struct RangeAbsMaxMirror {
  float scale;
  std::vector<float> window;
  int64_t iter;
  DeviceArray<float> d_scale, d_window;
  DeviceArray<int64_t> d_iter;
  RangeAbsMaxMirror(float scale0, const std::vector<float>& window0, int64_t iter0)
      : scale(scale0), window(window0), iter(iter0), d_scale({scale0}), d_window(window0), d_iter({iter0}) {}
  int64_t window_size() const { return static_cast<int64_t>(window.size()); }
  float update_cpu(float abs_max) {
    return fq::range_abs_max_update_cpu({&scale, window.data(), window_size(), &iter}, abs_max);
  }
  cudaError_t launch(const fq::FakeQuantArgs& args, int32_t bits, fq::Rounding rounding, bool training,
                     void* ws) const {
    return fq::cuda::launch_fake_quant_range_abs_max(args, {d_scale.ptr, d_window.ptr, window_size(), d_iter.ptr},
                                                     bits, rounding, training, ws, nullptr);
  }
  void expect_device_matches(const std::string& where) const {
    EXPECT_TRUE(same_floats(d_scale.read(), {scale})) << where << ": scale";
    EXPECT_TRUE(same_floats(d_window.read(), window)) << where << ": window";
    EXPECT_EQ(d_iter.read(), std::vector<int64_t>{iter}) << where << ": iter";
  }
};

// The moving-average min/max state, both switches on to begin with.
struct MinMaxMirror {
  std::vector<float> running_min, running_max, scale;
  std::vector<int32_t> zero_point;
  int64_t observer_on = 1, fake_quant_on = 1;
  DeviceArray<float> d_min, d_max, d_scale;
  DeviceArray<int32_t> d_zp;
  DeviceArray<int64_t> d_observer_on, d_fake_quant_on;
  fq::MovingAverageMinMaxState host, dev;

  MinMaxMirror(int64_t channels, int32_t quant_min, int32_t quant_max, bool symmetric)
      : running_min(channels, kInf),
        running_max(channels, -kInf),
        scale(channels, 1.0f),
        zero_point(channels, 0),
        d_min(running_min),
        d_max(running_max),
        d_scale(scale),
        d_zp(zero_point),
        d_observer_on({1}),
        d_fake_quant_on({1}) {
    host.observer_on = &observer_on;
    host.fake_quant_on = &fake_quant_on;
    host.running_min = running_min.data();
    host.running_max = running_max.data();
    host.scale = scale.data();
    host.zero_point = zero_point.data();
    host.channels = channels;
    host.averaging_const = 0.25f;
    host.quant_min = quant_min;
    host.quant_max = quant_max;
    host.symmetric = symmetric;
    dev = host;
    dev.observer_on = d_observer_on.ptr;
    dev.fake_quant_on = d_fake_quant_on.ptr;
    dev.running_min = d_min.ptr;
    dev.running_max = d_max.ptr;
    dev.scale = d_scale.ptr;
    dev.zero_point = d_zp.ptr;
  }

  void set_switches(int64_t observer, int64_t fake_quant) {
    observer_on = observer;
    fake_quant_on = fake_quant;
    d_observer_on.write({observer});
    d_fake_quant_on.write({fake_quant});
  }

  // The CPU reference up to the quant-dequant, as the CPU binding does it: reduce the batch,
  // update the state. Returns the scales to quant-dequant with: the stored ones, NaN for each
  // channel whose non-finite step was not applied (those `rejected` holds).
  std::vector<float> update_cpu(const HostTensor& x, int64_t channel_stride, std::vector<uint8_t>& rejected) {
    const int64_t channels = host.channels;
    const bool observe = x.numel > 0 && observer_on != 0;
    std::vector<float> cur_min(channels), cur_max(channels);
    if (observe) {
      fq::reduce_cpu({x.dtype, x.bytes.data(), x.numel, channels, channel_stride}, fq::ReduceKind::kMinMax,
                     cur_min.data(), cur_max.data());
    }
    rejected.assign(channels, 0);
    fq::moving_average_min_max_update_cpu(host, cur_min.data(), cur_max.data(), observe, rejected.data());
    std::vector<float> use_scale = scale;
    for (int64_t ch = 0; ch < channels; ++ch) {
      if (rejected[ch]) use_scale[ch] = kNaN;
    }
    return use_scale;
  }

  // The quant-dequant with the stored zero points and `use_scale`: per tensor for one channel.
  void quant_dequant_cpu(const fq::FakeQuantArgs& args, const std::vector<float>& use_scale, int64_t channel_stride,
                         fq::Rounding rounding) const {
    if (host.channels == 1) {
      fq::PerTensorQParams qp;
      qp.scale = use_scale.data();
      qp.zero_point = zero_point.data();
      qp.quant_min = host.quant_min;
      qp.quant_max = host.quant_max;
      qp.rounding = rounding;
      qp.enabled = &fake_quant_on;
      fq::fake_quant_per_tensor_cpu(args, qp);
    } else {
      fq::PerChannelQParams qp;
      qp.scale = use_scale.data();
      qp.zero_point = zero_point.data();
      qp.channels = host.channels;
      qp.channel_stride = channel_stride;
      qp.quant_min = host.quant_min;
      qp.quant_max = host.quant_max;
      qp.rounding = rounding;
      qp.enabled = &fake_quant_on;
      fq::fake_quant_per_channel_cpu(args, qp);
    }
  }

  cudaError_t launch(const fq::FakeQuantArgs& args, int64_t channel_stride, fq::Rounding rounding, void* ws) const {
    return fq::cuda::launch_fused_moving_average_min_max(args, dev, channel_stride, rounding, ws, nullptr);
  }

  void expect_device_matches(const std::string& where) const {
    EXPECT_TRUE(same_floats(d_min.read(), running_min)) << where << ": running_min";
    EXPECT_TRUE(same_floats(d_max.read(), running_max)) << where << ": running_max";
    EXPECT_TRUE(same_floats(d_scale.read(), scale)) << where << ": scale";
    EXPECT_EQ(d_zp.read(), zero_point) << where << ": zero_point";
  }
};

// ---------------------------------------------------------------------------------------
// launch_reduce

struct ReduceCase {
  fq::DType dtype;
  int64_t outer, channels, inner;  // memory order [outer, channels, inner]; channels 1: per tensor
  int64_t offset;                  // elements the input is shifted off alignment
  Specials specials;
  ReduceStage1 stage1;  // the path this layout must take
  bool vector_loads;
};

std::string reduce_case_name(const ::testing::TestParamInfo<ReduceCase>& info) {
  const ReduceCase& c = info.param;
  std::ostringstream os;
  os << dtype_label(c.dtype) << "_" << shape_label(c) << (c.offset ? "_misaligned" : "") << specials_suffix(c.specials);
  return os.str();
}

class CudaReduce : public ::testing::TestWithParam<ReduceCase> {};

TEST_P(CudaReduce, BothKindsMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  const ReduceCase c = GetParam();
  const int64_t n = c.outer * c.channels * c.inner;
  const HostTensor x =
      host_tensor(c.dtype, random_values(n, static_cast<uint32_t>(n * 3 + c.channels), 1.0f, c.specials));
  const fq::ReduceArgs host{c.dtype, x.bytes.data(), n, c.channels, std::max<int64_t>(c.inner, 1)};
  std::vector<float> abs_max(c.channels), lo(c.channels), hi(c.channels);
  fq::reduce_cpu(host, fq::ReduceKind::kAbsMax, abs_max.data(), nullptr);
  fq::reduce_cpu(host, fq::ReduceKind::kMinMax, lo.data(), hi.data());

  DeviceTensor dx(c.dtype, n, c.offset);
  dx.upload(x);
  fq::ReduceArgs dev = host;
  dev.input = dx.ptr;
  const fq::cuda::ReducePath path = fq::cuda::reduce_path(dev);
  EXPECT_EQ(path.stage1, c.stage1);
  EXPECT_EQ(path.vector_loads, c.vector_loads);
  const std::vector<float> poison(c.channels, 1234.5f);
  DeviceArray<float> da(poison), db(poison);
  DeviceBuffer<unsigned char> ws(fq::cuda::reduce_workspace_bytes(dev));
  ASSERT_CUDA(fq::cuda::launch_reduce(dev, fq::ReduceKind::kAbsMax, da.ptr, nullptr, ws.ptr, nullptr));
  EXPECT_TRUE(same_floats(da.read(), abs_max)) << "abs-max";
  da.write(poison);
  ASSERT_CUDA(fq::cuda::launch_reduce(dev, fq::ReduceKind::kMinMax, da.ptr, db.ptr, ws.ptr, nullptr));
  EXPECT_TRUE(same_floats(da.read(), lo)) << "min";
  EXPECT_TRUE(same_floats(db.read(), hi)) << "max";
}

constexpr fq::DType kF32 = fq::DType::kFloat32;
constexpr fq::DType kF16 = fq::DType::kFloat16;
constexpr fq::DType kBF16 = fq::DType::kBFloat16;
constexpr ReduceStage1 kRuns = ReduceStage1::kRuns;
constexpr ReduceStage1 kInnermost = ReduceStage1::kChannelInnermost;
constexpr ReduceStage1 kStrided = ReduceStage1::kStrided;

INSTANTIATE_TEST_SUITE_P(
    Layouts, CudaReduce,
    ::testing::Values(
        // Per tensor: empty (the identity), one element, odd tails, several splits.
        ReduceCase{kF32, 1, 1, 0, 0, Specials::kNone, ReduceStage1::kNone, false},
        ReduceCase{kF32, 1, 1, 1, 0, Specials::kNone, kRuns, true},
        ReduceCase{kF32, 1, 1, 7, 0, Specials::kNone, kRuns, true},
        ReduceCase{kF32, 1, 1, 20011, 0, Specials::kNaNInf, kRuns, true},
        ReduceCase{kF32, 1, 1, 150001, 0, Specials::kNaNInf, kRuns, true},  // > 32 partials: block finish
        ReduceCase{kF32, 1, 1, 5001, 1, Specials::kInf, kRuns, false},
        ReduceCase{kF16, 1, 1, 5001, 0, Specials::kNaNInf, kRuns, true},
        ReduceCase{kF16, 1, 1, 9, 1, Specials::kNone, kRuns, false},
        ReduceCase{kBF16, 1, 1, 5003, 0, Specials::kInf, kRuns, true},
        ReduceCase{kBF16, 1, 1, 5003, 1, Specials::kNaNInf, kRuns, false},
        // Channels first (outer 1): aligned runs (vector), odd runs, long runs split over
        // blocks, and more channels than the grid holds (the channels stride).
        ReduceCase{kF32, 1, 64, 40, 0, Specials::kNaNInf, kRuns, true},
        ReduceCase{kF16, 1, 64, 40, 0, Specials::kNone, kRuns, true},
        ReduceCase{kF32, 1, 64, 40, 1, Specials::kNone, kRuns, false},
        ReduceCase{kF32, 1, 5, 37, 0, Specials::kInf, kRuns, false},
        ReduceCase{kBF16, 1, 3, 9001, 0, Specials::kNaNInf, kRuns, false},
        ReduceCase{kBF16, 1, 2, 140000, 0, Specials::kInf, kRuns, true},
        ReduceCase{kF16, 1, 300, 8, 0, Specials::kNone, kRuns, true},
        ReduceCase{kF32, 1, 300, 2, 0, Specials::kNaNInf, kRuns, false},
        // Channels last (channel stride 1): full and partial 32-channel tiles, fewer channels
        // than a warp (rows packed into the warp), a [C] vector, and > 65535 channels.
        ReduceCase{kF32, 1000, 64, 1, 0, Specials::kNaNInf, kInnermost, false},
        ReduceCase{kF16, 5, 45, 1, 1, Specials::kInf, kInnermost, false},
        ReduceCase{kBF16, 300, 3, 1, 0, Specials::kNaNInf, kInnermost, false},
        ReduceCase{kF32, 700, 2, 1, 1, Specials::kNone, kInnermost, false},
        ReduceCase{kF16, 3000, 3, 1, 0, Specials::kNaNInf, kInnermost, false},
        ReduceCase{kF32, 1, 17, 1, 0, Specials::kNone, kInnermost, false},
        ReduceCase{kF32, 2, 70000, 1, 0, Specials::kNaNInf, kInnermost, false},
        ReduceCase{kBF16, 1, 70001, 1, 1, Specials::kInf, kInnermost, false},
        // Mid axis (outer > 1, inner > 1): steps shorter and longer than a run, long channels
        // split over blocks, the channels striding.
        ReduceCase{kF32, 8, 33, 17, 0, Specials::kNaNInf, kStrided, false},
        ReduceCase{kF16, 16, 3, 49, 1, Specials::kInf, kStrided, false},
        ReduceCase{kF32, 400, 2, 3, 0, Specials::kNone, kStrided, false},
        ReduceCase{kBF16, 3, 5, 4000, 0, Specials::kNaNInf, kStrided, false},
        ReduceCase{kF32, 2, 300, 2, 0, Specials::kNone, kStrided, false}),
    reduce_case_name);

// Zeros of both signs: min and max are +-0 depending on which zero a reduction tree meets
// first; the result must still equal the CPU reference bit for bit.
TEST(CudaReduceEdges, SignedZerosMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t outer, channels, inner;
  };
  for (const Shape s : {Shape{1, 1, 5000}, Shape{1, 4, 1000}, Shape{500, 8, 1}, Shape{10, 4, 50}}) {
    const int64_t n = s.outer * s.channels * s.inner;
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::vector<float> v(n);
    for (int64_t i = 0; i < n; ++i) {
      // Channels alternate between non-negative values (min is a zero) and non-positive
      // ones (max is a zero).
      const bool negative = ((i / s.inner) % s.channels) % 2 == 1;
      const uint32_t r = rng() % 4;
      const float magnitude = 0.5f + static_cast<float>(rng() % 100) / 10.0f;
      v[i] = r == 0 ? 0.0f : (r == 1 ? -0.0f : (negative ? -magnitude : magnitude));
    }
    const fq::ReduceArgs host{kF32, v.data(), n, s.channels, s.inner};
    std::vector<float> lo(s.channels), hi(s.channels);
    fq::reduce_cpu(host, fq::ReduceKind::kMinMax, lo.data(), hi.data());
    DeviceArray<float> dx(v), da(std::vector<float>(s.channels, 7.0f)), db(std::vector<float>(s.channels, 7.0f));
    fq::ReduceArgs dev = host;
    dev.input = dx.ptr;
    DeviceBuffer<unsigned char> ws(fq::cuda::reduce_workspace_bytes(dev));
    ASSERT_CUDA(fq::cuda::launch_reduce(dev, fq::ReduceKind::kMinMax, da.ptr, db.ptr, ws.ptr, nullptr));
    EXPECT_TRUE(same_floats(da.read(), lo)) << s.outer << "x" << s.channels << "x" << s.inner;
    EXPECT_TRUE(same_floats(db.read(), hi)) << s.outer << "x" << s.channels << "x" << s.inner;
  }
}

TEST(CudaReduceEdges, PathSelection) {
  // Host-side: the pointers are only inspected for alignment.
  alignas(16) static unsigned char storage[64];
  const void* aligned = storage;
  const void* misaligned = storage + 4;
  auto path = [](fq::DType dtype, const void* p, int64_t numel, int64_t channels, int64_t stride) {
    return fq::cuda::reduce_path(fq::ReduceArgs{dtype, p, numel, channels, stride});
  };
  // Per tensor: 16-byte loads whenever the pointer is aligned, whatever numel.
  EXPECT_EQ(path(kF32, aligned, 1001, 1, 1).stage1, kRuns);
  EXPECT_TRUE(path(kF32, aligned, 1001, 1, 1).vector_loads);
  EXPECT_TRUE(path(kF16, aligned, 7, 1, 1).vector_loads);
  EXPECT_TRUE(path(kBF16, aligned, 1001, 1, 5).vector_loads);  // channel_stride is ignored per tensor
  EXPECT_FALSE(path(kF32, misaligned, 1024, 1, 1).vector_loads);
  // Channels first: every run start aligned (run length a multiple of 16 bytes) for vector loads.
  EXPECT_EQ(path(kF32, aligned, 64 * 40, 64, 40).stage1, kRuns);
  EXPECT_TRUE(path(kF32, aligned, 64 * 40, 64, 40).vector_loads);
  EXPECT_TRUE(path(kF16, aligned, 64 * 8, 64, 8).vector_loads);
  EXPECT_FALSE(path(kF16, aligned, 64 * 4, 64, 4).vector_loads);
  EXPECT_FALSE(path(kF32, aligned, 5 * 37, 5, 37).vector_loads);
  EXPECT_FALSE(path(kF32, misaligned, 64 * 40, 64, 40).vector_loads);
  // Channels last / last axis (stride 1), including a single row: the channel-innermost shape.
  EXPECT_EQ(path(kF32, aligned, 8 * 64, 64, 1).stage1, kInnermost);
  EXPECT_EQ(path(kF16, aligned, 300 * 3, 3, 1).stage1, kInnermost);
  EXPECT_EQ(path(kF32, aligned, 70000, 70000, 1).stage1, kInnermost);
  EXPECT_FALSE(path(kF32, aligned, 8 * 64, 64, 1).vector_loads);
  // Mid axis: the strided shape.
  EXPECT_EQ(path(kF32, aligned, 8 * 33 * 17, 33, 17).stage1, kStrided);
  EXPECT_EQ(path(kBF16, aligned, 2 * 3 * 2, 3, 2).stage1, kStrided);
  // No elements, or arguments the launcher refuses: nothing runs.
  EXPECT_EQ(path(kF32, aligned, 0, 1, 1).stage1, ReduceStage1::kNone);
  EXPECT_EQ(path(kF32, aligned, 0, 5, 3).stage1, ReduceStage1::kNone);
  EXPECT_EQ(path(kF32, aligned, 10, 3, 2).stage1, ReduceStage1::kNone);  // not a whole row of 3 x 2
  EXPECT_EQ(fq::cuda::reduce_workspace_bytes(fq::ReduceArgs{kF32, aligned, 10, 3, 2}), 0u);
  EXPECT_EQ(fq::cuda::reduce_workspace_bytes(fq::ReduceArgs{kF32, aligned, 0, 3, 2}), 0u);
  EXPECT_GT(fq::cuda::reduce_workspace_bytes(fq::ReduceArgs{kF32, aligned, 6, 3, 2}), 0u);
}

TEST(CudaReduceEdges, RejectedArgumentsWriteNothing) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> x = random_values(60, 5, 1.0f, Specials::kNone);
  DeviceArray<float> dx(x), da(std::vector<float>(8, 7.0f)), db(std::vector<float>(8, 7.0f));
  DeviceBuffer<unsigned char> ws(4096);
  struct Bad {
    fq::ReduceArgs args;
    fq::ReduceKind kind;
  };
  const Bad bad[] = {
      {{kF32, dx.ptr, 60, 7, 1}, fq::ReduceKind::kMinMax},                          // 60 is not a multiple of 7
      {{kF32, dx.ptr, 60, 4, 0}, fq::ReduceKind::kMinMax},                          // channel_stride 0
      {{kF32, dx.ptr, 60, -4, 1}, fq::ReduceKind::kAbsMax},                         // negative channels
      {{kF32, dx.ptr, -1, 1, 1}, fq::ReduceKind::kAbsMax},                          // negative numel
      {{static_cast<fq::DType>(7), dx.ptr, 60, 1, 1}, fq::ReduceKind::kAbsMax},     // unknown dtype
      {{kF32, dx.ptr, 60, 1, 1}, static_cast<fq::ReduceKind>(5)},                    // unknown kind
  };
  for (const Bad& b : bad) {
    EXPECT_EQ(fq::cuda::launch_reduce(b.args, b.kind, da.ptr, db.ptr, ws.ptr, nullptr), cudaErrorInvalidValue);
  }
  // An empty channel axis is nothing to reduce into.
  EXPECT_EQ(fq::cuda::launch_reduce({kF32, dx.ptr, 0, 0, 1}, fq::ReduceKind::kMinMax, da.ptr, db.ptr, ws.ptr, nullptr),
            cudaSuccess);
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(da.read(), std::vector<float>(8, 7.0f));
  EXPECT_EQ(db.read(), std::vector<float>(8, 7.0f));
}

// ---------------------------------------------------------------------------------------
// launch_fake_quant_moving_average_abs_max

struct AbsMaxCase {
  fq::DType dtype;
  int64_t numel, offset;
  fq::Rounding rounding;
  int32_t bits;
  Specials specials;  // in the last training step
};

std::string abs_max_case_name(const ::testing::TestParamInfo<AbsMaxCase>& info) {
  const AbsMaxCase& c = info.param;
  std::ostringstream os;
  os << dtype_label(c.dtype) << "_n" << c.numel << (c.offset ? "_misaligned" : "") << "_" << rounding_label(c.rounding)
     << "_bits" << c.bits << specials_suffix(c.specials);
  return os.str();
}

class CudaMovingAverageAbsMax : public ::testing::TestWithParam<AbsMaxCase> {};

// Runs an abs-max observer (a mirror above) one step per magnitude, training in the first
// `training_steps` (the case's specials in the last of them) and in eval after them, and
// compares the GPU with the CPU reference after every step.
template <typename Mirror>
void expect_steps_match_cpu(Mirror& m, const AbsMaxCase& c, const std::vector<float>& magnitudes, int training_steps,
                            uint32_t seed) {
  const int64_t n = c.numel;
  ObserverLaunch dev(c.dtype, n, c.offset);
  for (int step = 0; step < static_cast<int>(magnitudes.size()); ++step) {
    const bool training = step < training_steps;
    const Specials specials = step == training_steps - 1 ? c.specials : Specials::kNone;
    const HostTensor x = host_tensor(c.dtype, random_values(n, seed + step, magnitudes[step], specials));
    HostOutputs cpu(c.dtype, n);
    if (n > 0) {
      // The scale the quant-dequant uses: NaN (poisoned) where a non-finite step is not applied.
      const float use_scale = training ? m.update_cpu(abs_max_cpu(x)) : m.scale;
      abs_max_quant_dequant_cpu(cpu.args(x), use_scale, c.bits, c.rounding);
    }
    ASSERT_CUDA(m.launch(dev.prepare(x), c.bits, c.rounding, training, dev.ws.ptr));
    const std::string where = "step " + std::to_string(step);
    m.expect_device_matches(where);
    expect_outputs_match(dev.out, cpu, c.dtype, where);
  }
}

// One training step of an abs-max observer (a mirror above), 8 bits, half away: the CPU
// reference updates the host state and quant-dequants, the launch updates the device state;
// then the states and the outputs are compared.
template <typename Mirror>
void expect_training_step_matches_cpu(Mirror& m, ObserverLaunch& dev, const HostTensor& x, const std::string& where) {
  HostOutputs cpu(x.dtype, x.numel);
  abs_max_quant_dequant_cpu(cpu.args(x), m.update_cpu(abs_max_cpu(x)), 8, fq::Rounding::kHalfAway);
  ASSERT_CUDA(m.launch(dev.prepare(x), 8, fq::Rounding::kHalfAway, true, dev.ws.ptr));
  m.expect_device_matches(where);
  expect_outputs_match(dev.out, cpu, x.dtype, where);
}

// Four training steps (the state moves), then two eval steps (the stored scale only).
TEST_P(CudaMovingAverageAbsMax, TrainingAndEvalMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  MovingAverageAbsMaxMirror m(1.5f, 2.0f, 3.0f);
  expect_steps_match_cpu(m, GetParam(), {1.0f, 4.0f, 0.25f, 2.0f, 3.0f, 0.5f}, 4, 40);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaMovingAverageAbsMax,
    ::testing::Values(AbsMaxCase{kF32, 0, 0, fq::Rounding::kHalfAway, 8, Specials::kNone},
                      AbsMaxCase{kF32, 1, 0, fq::Rounding::kHalfAway, 8, Specials::kNone},
                      AbsMaxCase{kF32, 4099, 0, fq::Rounding::kHalfAway, 8, Specials::kNone},
                      AbsMaxCase{kF32, 4099, 1, fq::Rounding::kHalfEven, 4, Specials::kInf},
                      AbsMaxCase{kF16, 2053, 0, fq::Rounding::kHalfEven, 2, Specials::kNaNInf},
                      AbsMaxCase{kF16, 33, 1, fq::Rounding::kHalfAway, 16, Specials::kNone},
                      AbsMaxCase{kBF16, 2053, 1, fq::Rounding::kHalfAway, 8, Specials::kInf},
                      AbsMaxCase{kBF16, 9000, 0, fq::Rounding::kHalfEven, 5, Specials::kNone},
                      AbsMaxCase{kF32, 140001, 0, fq::Rounding::kHalfEven, 8, Specials::kNaNInf}),
    abs_max_case_name);

// ---------------------------------------------------------------------------------------
// launch_fake_quant_range_abs_max

class CudaRangeAbsMax : public ::testing::TestWithParam<AbsMaxCase> {};

// A window of 3 over ten training steps whose magnitudes rise and fall, so that the window
// wraps around and the maximum leaves it (rescans) several times; then eval steps.
TEST_P(CudaRangeAbsMax, WindowSequenceMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const AbsMaxCase c = GetParam();
  RangeAbsMaxMirror m(0.0f, std::vector<float>(3, 0.0f), 0);
  expect_steps_match_cpu(m, c, {5.0f, 3.0f, 2.0f, 1.0f, 0.5f, 7.0f, 0.25f, 0.2f, 0.1f, 6.0f, 1.0f, 9.0f}, 10, 70);
  if (HasFatalFailure()) return;
  // Ten training steps; one with non-finite values (step 9) is not applied.
  if (c.numel > 0) EXPECT_EQ(m.iter, c.specials == Specials::kNone ? 10 : 9);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaRangeAbsMax,
    ::testing::Values(AbsMaxCase{kF32, 0, 0, fq::Rounding::kHalfAway, 8, Specials::kNone},
                      AbsMaxCase{kF32, 1, 1, fq::Rounding::kHalfAway, 8, Specials::kNone},
                      AbsMaxCase{kF32, 3001, 0, fq::Rounding::kHalfAway, 8, Specials::kInf},
                      AbsMaxCase{kF16, 1027, 1, fq::Rounding::kHalfEven, 3, Specials::kNaNInf},
                      AbsMaxCase{kBF16, 2051, 0, fq::Rounding::kHalfEven, 16, Specials::kNone},
                      AbsMaxCase{kF16, 140001, 1, fq::Rounding::kHalfAway, 8, Specials::kNone}),
    abs_max_case_name);

// Finding: the rescan of the window (its maximum evicted) must propagate a NaN wherever it
// sits in the window, on both backends (it starts from 0, the identity of an abs-max). A
// window of 300 has entries beyond one per thread of the rescanning block.
TEST(CudaRangeAbsMaxEdges, NaNInTheRescannedWindowGivesANaNScale) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1000, window_size = 300, evicted = 1000 % window_size;
  for (const int64_t nan_at : {int64_t{0}, int64_t{2}, int64_t{280}}) {
    std::mt19937 rng(static_cast<uint32_t>(nan_at));
    std::uniform_real_distribution<float> entry(0.1f, 1.0f);
    std::vector<float> window(window_size);
    for (auto& w : window) w = entry(rng);
    window[evicted] = 5.0f;  // the current scale: evicting it forces the rescan
    window[nan_at] = kNaN;
    std::vector<float> xv(n);
    for (auto& v : xv) v = entry(rng) - 0.55f;  // |x| < 5: the scale is not simply replaced
    const HostTensor x = host_tensor(kF32, xv);
    RangeAbsMaxMirror m(5.0f, window, 1000);
    HostOutputs cpu(kF32, n);
    abs_max_quant_dequant_cpu(cpu.args(x), m.update_cpu(abs_max_cpu(x)), 8, fq::Rounding::kHalfAway);
    EXPECT_TRUE(std::isnan(m.scale)) << "CPU, NaN at window position " << nan_at;

    ObserverLaunch dev(kF32, n, 0);
    ASSERT_CUDA(m.launch(dev.prepare(x), 8, fq::Rounding::kHalfAway, true, dev.ws.ptr));
    const std::string where = "NaN at window position " + std::to_string(nan_at);
    EXPECT_TRUE(std::isnan(m.d_scale.read()[0])) << where;
    EXPECT_TRUE(same_floats(m.d_window.read(), m.window)) << where;
    EXPECT_EQ(m.d_iter.read()[0], 1001) << where;
    expect_outputs_match(dev.out, cpu, kF32, where);
  }
}

// Finding: a negative iter would index before the window. Out-of-contract state on the
// device: the state stays as it is and every output is NaN with mask 0, as the CPU reference
// function does (the CPU binding rejects iter < 0 up front).
TEST(CudaRangeAbsMaxEdges, NegativeIterLeavesStateAndPoisonsOutput) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 777;
  const std::vector<float> window0 = {1.0f, 2.0f, 3.0f, 0.5f, 0.25f};
  RangeAbsMaxMirror m(3.0f, window0, -3);
  const HostTensor x = host_tensor(kF32, random_values(n, 17, 1.0f, Specials::kNone));
  const float use_scale = m.update_cpu(abs_max_cpu(x));
  EXPECT_TRUE(std::isnan(use_scale));
  EXPECT_EQ(m.window, window0);
  EXPECT_EQ(m.scale, 3.0f);
  EXPECT_EQ(m.iter, -3);
  HostOutputs cpu(kF32, n);
  abs_max_quant_dequant_cpu(cpu.args(x), use_scale, 8, fq::Rounding::kHalfAway);

  ObserverLaunch dev(kF32, n, 0);
  ASSERT_CUDA(m.launch(dev.prepare(x), 8, fq::Rounding::kHalfAway, true, dev.ws.ptr));
  EXPECT_EQ(m.d_scale.read(), std::vector<float>{3.0f});
  EXPECT_EQ(m.d_window.read(), window0);
  EXPECT_EQ(m.d_iter.read(), std::vector<int64_t>{-3});
  expect_outputs_match(dev.out, cpu, kF32, "iter -3");
  expect_poisoned(dev.out, n, "iter -3");
}

// ---------------------------------------------------------------------------------------
// launch_fused_moving_average_min_max

struct MinMaxCase {
  fq::DType dtype;
  int64_t outer, channels, inner;
  bool per_tensor;  // one channel (the whole tensor), whatever the shape
  int64_t offset;
  fq::Rounding rounding;
  int32_t quant_min, quant_max;
  bool symmetric;
  Specials specials;  // in the last step
};

std::string min_max_case_name(const ::testing::TestParamInfo<MinMaxCase>& info) {
  const MinMaxCase& c = info.param;
  std::ostringstream os;
  os << dtype_label(c.dtype) << "_" << shape_label(c) << (c.per_tensor ? "_per_tensor" : "_per_channel")
     << (c.offset ? "_misaligned" : "") << "_" << rounding_label(c.rounding) << "_q" << (c.quant_min < 0 ? "m" : "")
     << std::abs(c.quant_min) << "_" << c.quant_max << (c.symmetric ? "_symmetric" : "_affine")
     << specials_suffix(c.specials);
  return os.str();
}

class CudaFusedMovingAverageMinMax : public ::testing::TestWithParam<MinMaxCase> {};

// Six steps toggling observer_on / fake_quant_on, with magnitudes that move the statistics.
TEST_P(CudaFusedMovingAverageMinMax, StepsMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  const MinMaxCase c = GetParam();
  const int64_t n = c.outer * c.channels * c.inner;
  const int64_t channels = c.per_tensor ? 1 : c.channels;
  const int64_t channel_stride = c.per_tensor ? 1 : c.inner;
  MinMaxMirror m(channels, c.quant_min, c.quant_max, c.symmetric);
  ObserverLaunch dev(c.dtype, n, c.offset, channels, channel_stride);

  struct Step {
    int64_t observer_on, fake_quant_on;
    float magnitude;
  };
  const Step steps[] = {{1, 1, 1.0f}, {1, 1, 3.0f}, {0, 1, 0.5f}, {1, 0, 2.0f}, {0, 0, 1.0f}, {1, 1, 4.0f}};
  for (int k = 0; k < 6; ++k) {
    const Step& st = steps[k];
    m.set_switches(st.observer_on, st.fake_quant_on);
    const Specials specials = k == 5 ? c.specials : Specials::kNone;
    const HostTensor x = host_tensor(c.dtype, random_values(n, 90 + k, st.magnitude, specials));
    std::vector<uint8_t> rejected;
    const std::vector<float> use_scale = m.update_cpu(x, channel_stride, rejected);
    HostOutputs cpu(c.dtype, n);
    m.quant_dequant_cpu(cpu.args(x), use_scale, channel_stride, c.rounding);
    ASSERT_CUDA(m.launch(dev.prepare(x), channel_stride, c.rounding, dev.ws.ptr));
    const std::string where = "step " + std::to_string(k);
    m.expect_device_matches(where);
    expect_outputs_match(dev.out, cpu, c.dtype, where);
  }
}

constexpr fq::Rounding kEven = fq::Rounding::kHalfEven;
constexpr fq::Rounding kAway = fq::Rounding::kHalfAway;

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaFusedMovingAverageMinMax,
    ::testing::Values(
        // Per tensor.
        MinMaxCase{kF32, 1, 1, 0, true, 0, kEven, -128, 127, false, Specials::kNone},
        MinMaxCase{kF32, 1, 1, 1, true, 0, kEven, 0, 255, false, Specials::kNone},
        MinMaxCase{kF32, 1, 1, 3001, true, 0, kEven, -128, 127, true, Specials::kNaNInf},
        MinMaxCase{kF16, 1, 1, 2051, true, 1, kAway, 0, 255, false, Specials::kInf},
        MinMaxCase{kBF16, 4, 6, 50, true, 0, kEven, -8, 7, true, Specials::kNone},
        MinMaxCase{kF32, 1, 1, 140001, true, 0, kAway, -128, 127, false, Specials::kNaNInf},
        MinMaxCase{kF16, 1, 2, 70000, false, 0, kEven, 0, 255, false, Specials::kNone},
        // Per channel: channels first, channels last, mid axis; empty; many channels.
        MinMaxCase{kF32, 1, 16, 64, false, 0, kEven, -128, 127, false, Specials::kNaNInf},
        MinMaxCase{kF16, 1, 5, 37, false, 1, kAway, 0, 255, true, Specials::kNone},
        MinMaxCase{kF32, 200, 24, 1, false, 0, kAway, -128, 127, true, Specials::kInf},
        MinMaxCase{kBF16, 100, 3, 1, false, 1, kEven, 0, 15, false, Specials::kNaNInf},
        MinMaxCase{kF32, 16, 24, 49, false, 1, kEven, -128, 127, false, Specials::kNone},
        MinMaxCase{kF16, 6, 7, 9, false, 0, kAway, -32768, 32767, true, Specials::kNaNInf},
        MinMaxCase{kF32, 0, 5, 3, false, 0, kEven, -128, 127, false, Specials::kNone},
        MinMaxCase{kF32, 2, 300, 2, false, 0, kEven, 0, 255, false, Specials::kNone},
        MinMaxCase{kF32, 2, 70000, 1, false, 0, kEven, -128, 127, true, Specials::kNaNInf}),
    min_max_case_name);

// ---------------------------------------------------------------------------------------
// Non-finite statistics (docs/numerics.md): a batch whose statistic (or the update's result) is
// not finite leaves the observer state as it was and poisons that call's output (NaN, mask 0);
// the finite batches after it continue as if it had not come. Finding: a NaN or inf batch used
// to enter the state for good.

TEST(CudaObserverNonFinite, AbsMaxObserversSkipABadBatch) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 2049;
  const Specials steps[] = {Specials::kNone, Specials::kNaNInf, Specials::kInf, Specials::kNone, Specials::kNone};
  MovingAverageAbsMaxMirror ma(0.0f, 0.0f, 0.0f);
  RangeAbsMaxMirror range(0.0f, std::vector<float>(3, 0.0f), 0);
  ObserverLaunch dev(kF32, n, 0);
  for (int step = 0; step < 5; ++step) {
    const bool bad = steps[step] != Specials::kNone;
    const HostTensor x = host_tensor(kF32, random_values(n, 300 + step, 1.0f + step, steps[step]));
    const std::string where = "step " + std::to_string(step);
    // moving_average_abs_max
    const float ma_before[3] = {ma.scale, ma.state, ma.accum};
    ASSERT_NO_FATAL_FAILURE(expect_training_step_matches_cpu(ma, dev, x, where + " moving_average_abs_max"));
    if (bad) {
      EXPECT_TRUE(same_floats({ma.scale, ma.state, ma.accum}, {ma_before[0], ma_before[1], ma_before[2]})) << where;
      expect_poisoned(dev.out, n, where + " moving_average_abs_max");
    }
    // range_abs_max
    const std::vector<float> window_before = range.window;
    const int64_t iter_before = range.iter;
    ASSERT_NO_FATAL_FAILURE(expect_training_step_matches_cpu(range, dev, x, where + " range_abs_max"));
    if (bad) {
      EXPECT_EQ(range.window, window_before) << where;
      EXPECT_EQ(range.iter, iter_before) << where;
      expect_poisoned(dev.out, n, where + " range_abs_max");
    }
  }
  EXPECT_EQ(range.iter, 3);  // the three finite steps
  EXPECT_TRUE(std::isfinite(ma.scale) && std::isfinite(range.scale));
}

TEST(CudaObserverNonFinite, MinMaxObserverSkipsOnlyTheBadChannel) {
  SKIP_WITHOUT_GPU();
  const int64_t outer = 50, channels = 4, n = outer * channels;  // channels innermost
  MinMaxMirror m(channels, 0, 255, false);
  ObserverLaunch dev(kF32, n, 0, channels, 1);
  for (int step = 0; step < 4; ++step) {
    std::vector<float> v = random_values(n, 500 + step, 1.0f + step, Specials::kNone);
    const int64_t bad_channel = 2;
    if (step == 1) v[7 * channels + bad_channel] = kNaN;
    if (step == 2) v[3 * channels + bad_channel] = -kInf;
    const HostTensor x = host_tensor(kF32, v);
    const float min_before = m.running_min[bad_channel], max_before = m.running_max[bad_channel];
    std::vector<uint8_t> rejected;
    const std::vector<float> use_scale = m.update_cpu(x, 1, rejected);
    for (int64_t c = 0; c < channels; ++c) {
      EXPECT_EQ(rejected[c], (step == 1 || step == 2) && c == bad_channel ? 1 : 0) << "step " << step;
    }
    if (step == 1 || step == 2) {
      EXPECT_EQ(m.running_min[bad_channel], min_before);
      EXPECT_EQ(m.running_max[bad_channel], max_before);
    }
    HostOutputs cpu(kF32, n);
    m.quant_dequant_cpu(cpu.args(x), use_scale, 1, fq::Rounding::kHalfEven);
    ASSERT_CUDA(m.launch(dev.prepare(x), 1, fq::Rounding::kHalfEven, dev.ws.ptr));
    const std::string where = "step " + std::to_string(step);
    m.expect_device_matches(where);
    expect_outputs_match(dev.out, cpu, kF32, where);
  }
  for (int64_t c = 0; c < channels; ++c) {
    EXPECT_TRUE(std::isfinite(m.running_min[c]) && std::isfinite(m.running_max[c]));
  }
}

// Finding: iter + 1 overflowed at INT64_MAX (undefined behaviour). The counter continues as
// window_size + (iter + 1) % window_size, the same slots in the same order, on both backends.
TEST(CudaRangeAbsMaxEdges, IterAtInt64MaxContinuesWithoutOverflow) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 500, window_size = 5;
  const int64_t max_iter = std::numeric_limits<int64_t>::max();
  RangeAbsMaxMirror m(2.0f, {0.5f, 2.0f, 1.0f, 0.25f, 0.75f}, max_iter - 1);
  ObserverLaunch dev(kF32, n, 0);
  for (int step = 0; step < 4; ++step) {
    const HostTensor x = host_tensor(kF32, random_values(n, 700 + step, 0.5f + step, Specials::kNone));
    const float abs_max = abs_max_cpu(x);
    const int64_t slot = m.iter % window_size;
    HostOutputs cpu(kF32, n);
    abs_max_quant_dequant_cpu(cpu.args(x), m.update_cpu(abs_max), 8, fq::Rounding::kHalfAway);
    EXPECT_EQ(m.window[slot], abs_max);
    EXPECT_GE(m.iter, window_size);
    EXPECT_EQ(m.iter % window_size, (slot + 1) % window_size);
    ASSERT_CUDA(m.launch(dev.prepare(x), 8, fq::Rounding::kHalfAway, true, dev.ws.ptr));
    const std::string where = "step " + std::to_string(step);
    m.expect_device_matches(where);
    expect_outputs_match(dev.out, cpu, kF32, where);
  }
  EXPECT_EQ(m.iter, window_size + (max_iter % window_size + 1) % window_size + 2);
}

// ---------------------------------------------------------------------------------------
// Rejected arguments: every observer launcher checks its arguments before it launches
// anything, so an error leaves the state (and the outputs) as they were. Finding: stochastic
// rounding (the observers have no seed) used to fail in the quant-dequant launch, after the
// reduction's epilogue had already updated the state.

TEST(CudaObserverLaunch, RejectedArgumentsChangeNothing) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 96;
  const HostTensor x = host_tensor(kF32, random_values(n, 23, 3.0f, Specials::kNone));
  DeviceTensor dx(kF32, n, 0);
  dx.upload(x);
  DeviceOutputs out(kF32, n, 0);
  out.poison();
  const std::vector<unsigned char> y0 = out.y.read();
  const std::vector<uint8_t> mask0 = out.mask.read();
  DeviceBuffer<unsigned char> ws(1 << 16);
  const fq::FakeQuantArgs args{kF32, dx.ptr, out.y.ptr, out.mask.ptr, n};
  fq::FakeQuantArgs bad_dtype = args;
  bad_dtype.dtype = static_cast<fq::DType>(9);
  const fq::Rounding stochastic = fq::Rounding::kStochastic;

  // moving_average_abs_max
  DeviceArray<float> ma_scale({1.0f}), ma_state({1.0f}), ma_accum({1.0f});
  const fq::MovingAverageAbsMaxState ma{ma_scale.ptr, ma_state.ptr, ma_accum.ptr, 0.9f};
  EXPECT_EQ(fq::cuda::launch_fake_quant_moving_average_abs_max(args, ma, 8, stochastic, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_moving_average_abs_max(args, ma, 1, kAway, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_moving_average_abs_max(args, ma, 17, kAway, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_moving_average_abs_max(bad_dtype, ma, 8, kAway, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_moving_average_abs_max(args, ma, 8, stochastic, false, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(ma_scale.read(), std::vector<float>{1.0f});
  EXPECT_EQ(ma_state.read(), std::vector<float>{1.0f});
  EXPECT_EQ(ma_accum.read(), std::vector<float>{1.0f});

  // range_abs_max
  DeviceArray<float> r_scale({2.0f}), r_window({2.0f, 1.0f, 0.5f});
  DeviceArray<int64_t> r_iter({3});
  fq::RangeAbsMaxState r{r_scale.ptr, r_window.ptr, 3, r_iter.ptr};
  EXPECT_EQ(fq::cuda::launch_fake_quant_range_abs_max(args, r, 8, stochastic, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_range_abs_max(args, r, 0, kAway, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_range_abs_max(bad_dtype, r, 8, kAway, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  r.window_size = 0;
  EXPECT_EQ(fq::cuda::launch_fake_quant_range_abs_max(args, r, 8, kAway, true, ws.ptr, nullptr),
            cudaErrorInvalidValue);
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(r_scale.read(), std::vector<float>{2.0f});
  EXPECT_EQ(r_window.read(), (std::vector<float>{2.0f, 1.0f, 0.5f}));
  EXPECT_EQ(r_iter.read(), std::vector<int64_t>{3});

  // fused moving-average min/max, per tensor and per channel
  const std::vector<float> min0 = {-1.0f, -2.0f, -3.0f, -4.0f}, max0 = {1.0f, 2.0f, 3.0f, 4.0f},
                           scale0 = {0.5f, 0.5f, 0.5f, 0.5f};
  const std::vector<int32_t> zp0 = {1, 2, 3, 4};
  DeviceArray<float> f_min(min0), f_max(max0), f_scale(scale0);
  DeviceArray<int32_t> f_zp(zp0);
  DeviceArray<int64_t> on({1});
  fq::MovingAverageMinMaxState f;
  f.observer_on = f.fake_quant_on = on.ptr;
  f.running_min = f_min.ptr;
  f.running_max = f_max.ptr;
  f.scale = f_scale.ptr;
  f.zero_point = f_zp.ptr;
  auto fused = [&](const fq::FakeQuantArgs& a, fq::MovingAverageMinMaxState s, int64_t stride, fq::Rounding rounding) {
    return fq::cuda::launch_fused_moving_average_min_max(a, s, stride, rounding, ws.ptr, nullptr);
  };
  f.channels = 1;
  EXPECT_EQ(fused(args, f, 1, stochastic), cudaErrorInvalidValue);
  EXPECT_EQ(fused(bad_dtype, f, 1, kEven), cudaErrorInvalidValue);
  f.quant_min = 10, f.quant_max = 5;
  EXPECT_EQ(fused(args, f, 1, kEven), cudaErrorInvalidValue);
  f.quant_min = -128, f.quant_max = 127;
  f.channels = 4;
  EXPECT_EQ(fused(args, f, 24, stochastic), cudaErrorInvalidValue);
  EXPECT_EQ(fused(args, f, 0, kEven), cudaErrorInvalidValue);   // channel_stride 0
  EXPECT_EQ(fused(args, f, 7, kEven), cudaErrorInvalidValue);   // 96 is not a multiple of 4 x 7
  f.channels = 0;
  EXPECT_EQ(fused(args, f, 1, kEven), cudaErrorInvalidValue);
  fq::FakeQuantArgs empty = args;
  empty.numel = 0;
  f.channels = 4;
  EXPECT_EQ(fused(empty, f, 1, stochastic), cudaErrorInvalidValue);  // refused even with nothing to quantise
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(f_min.read(), min0);
  EXPECT_EQ(f_max.read(), max0);
  EXPECT_EQ(f_scale.read(), scale0);
  EXPECT_EQ(f_zp.read(), zp0);

  EXPECT_EQ(out.y.read(), y0);
  EXPECT_EQ(out.mask.read(), mask0);
}

}  // namespace
