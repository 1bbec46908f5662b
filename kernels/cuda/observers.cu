// CUDA reductions and fused observers. Each fused observer is three launches on one stream
// and no host synchronisation: the reduction's partials, the finish kernel whose epilogue
// updates the observer state and writes the quant-dequant qparams (all in device memory),
// and the quant-dequant kernel reading those qparams.
#include <cub/block/block_reduce.cuh>

#include "fakequant/cuda/launch.h"
#include "fakequant/cuda/observers.h"
#include "reduce.cuh"

namespace fakequant {
namespace cuda {
namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Workspace layout: [partials][step: float x channels][zero point: int32 x channels]: the
// qparams the quant-dequant reads (the abs-max observers' step; the min/max observer's stored
// qparams, NaN-poisoned where its step was not applied).
struct ObserverWorkspace {
  void* partials;
  float* step;
  int32_t* zero_point;
};

ObserverWorkspace carve(const ReduceArgs& args, void* workspace) {
  char* p = static_cast<char*>(workspace);
  const size_t partials = align_up(reduce_partials_bytes(args));
  const size_t steps = align_up(static_cast<size_t>(std::max<int64_t>(args.channels, 0)) * sizeof(float));
  return {p, reinterpret_cast<float*>(p + partials), reinterpret_cast<int32_t*>(p + partials + steps)};
}

// Epilogues of the reduction (reduce.cuh): all but the window rescan run on one thread per
// channel.
struct StoreEpilogue {
  static constexpr bool kCooperative = false;
  float* out_a;
  float* out_b;
  __device__ void operator()(int64_t c, float a, float b) const {
    out_a[c] = a;
    if (out_b != nullptr) out_b[c] = b;
  }
};

__device__ __forceinline__ void write_abs_max_qparams(float scale, int32_t bin_cnt, float* step, int32_t* zp) {
  *step = abs_max_step(scale, bin_cnt);
  *zp = 0;
}

// Where an abs-max observer's epilogue writes the quant-dequant's qparams (step, zero point).
struct AbsMaxQParamsOut {
  int32_t bin_cnt;
  float* step;
  int32_t* zp;
  __device__ __forceinline__ void write(float scale) const { write_abs_max_qparams(scale, bin_cnt, step, zp); }
};

// Non-finite statistics (quant_math.h): an update that is not applied leaves the state and
// gives the quant-dequant a NaN step (a poisoned output), as the CPU reference does.
struct MovingAverageAbsMaxEpilogue : AbsMaxQParamsOut {
  static constexpr bool kCooperative = false;
  MovingAverageAbsMaxState s;
  __device__ void operator()(int64_t, float abs_max, float) const {
    const MovingAverageAbsMaxUpdate u = moving_average_abs_max(*s.state, *s.accum, abs_max, s.moving_rate);
    if (!moving_average_abs_max_accepted(abs_max, u)) {
      write(__uint_as_float(0x7FC00000u));
      return;
    }
    *s.state = u.state;
    *s.accum = u.accum;
    *s.scale = u.scale;
    write(u.scale);
  }
};

struct NanMaxOp {
  __device__ __forceinline__ float operator()(float x, float y) const { return nan_max(x, y); }
};

// Paddle's window update; the rescan of the window (when its maximum was evicted) is a
// block reduction here, where Paddle copies the window to the host. The rescan starts from 0
// (the identity of an abs-max) and propagates NaN, as range_abs_max_update_cpu does. A
// negative iter (out of contract, which only the device sees) would index before the window,
// and a non-finite abs-max would enter it: in both cases the state is left as it is and the
// step is NaN, so the quant-dequant poisons its output.
struct RangeAbsMaxEpilogue : AbsMaxQParamsOut {
  static constexpr bool kCooperative = true;
  RangeAbsMaxState s;
  __device__ void operator()(int64_t, float abs_max, float) const {
    using BlockReduce = cub::BlockReduce<float, kReduceThreads>;
    __shared__ typename BlockReduce::TempStorage temp;
    __shared__ float scale;
    __shared__ int64_t rescan;  // window entries to rescan, 0 for none
    __shared__ bool state_valid;
    if (threadIdx.x == 0) {
      const int64_t it = *s.iter;
      state_valid = it >= 0 && is_finite(abs_max);
      rescan = 0;
      if (!state_valid) {
        scale = __uint_as_float(0x7FC00000u);
      } else {
        const int64_t idx = it % s.window_size;
        const float removed = s.window[idx];
        s.window[idx] = abs_max;
        scale = *s.scale;
        if (scale < abs_max) {
          scale = abs_max;
        } else if (range_abs_max_left_window(removed, scale)) {
          rescan = it < s.window_size ? it : s.window_size;
        }
        *s.iter = range_abs_max_next_iter(it, s.window_size);
      }
    }
    __syncthreads();
    if (rescan > 0) {
      float m = 0.0f;
      for (int64_t k = threadIdx.x; k < rescan; k += blockDim.x) m = nan_max(m, fabsf(s.window[k]));
      const float window_max = BlockReduce(temp).Reduce(m, NanMaxOp());
      if (threadIdx.x == 0) scale = window_max;
    }
    if (threadIdx.x == 0) {
      if (state_valid) *s.scale = scale;
      write(scale);
    }
  }
};

// The quant-dequant reads its qparams from the workspace (step, zp): the stored scale and zero
// point, with a NaN scale for a channel whose step was not applied (non-finite statistics).
struct MovingAverageMinMaxEpilogue {
  static constexpr bool kCooperative = false;
  MovingAverageMinMaxState s;
  float* step;
  int32_t* zp;
  __device__ void operator()(int64_t c, float current_min, float current_max) const {
    bool applied = true;
    if (*s.observer_on != 0) {
      applied = moving_average_min_max_step(&s.running_min[c], &s.running_max[c], current_min, current_max,
                                            s.averaging_const);
    }
    if (*s.fake_quant_on != 0) {
      const AffineQParams q =
          choose_qparams(s.running_min[c], s.running_max[c], s.quant_min, s.quant_max, s.symmetric, false);
      s.scale[c] = q.scale;
      s.zero_point[c] = q.zero_point;
    }
    step[c] = applied ? s.scale[c] : __uint_as_float(0x7FC00000u);
    zp[c] = s.zero_point[c];
  }
};

// Eval mode of the abs-max observers: the quant-dequant step from the stored scale.
__global__ void abs_max_qparams_kernel(const float* scale, int32_t bin_cnt, float* step, int32_t* zp) {
  write_abs_max_qparams(*scale, bin_cnt, step, zp);
}

// qparams only (no reduction) for the min/max observer with an empty input: the state is
// not observed, but fake_quant_on still recomputes (scale, zero_point) as ATen does.
__global__ void moving_average_min_max_qparams_kernel(MovingAverageMinMaxState s) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < s.channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (*s.fake_quant_on != 0) {
      const AffineQParams q =
          choose_qparams(s.running_min[c], s.running_max[c], s.quant_min, s.quant_max, s.symmetric, false);
      s.scale[c] = q.scale;
      s.zero_point[c] = q.zero_point;
    }
  }
}

// Host-side checks, made before anything is launched, so that a launcher that fails has
// changed no state (reduce_args_valid is in reduce.cuh).
bool fake_quant_args_valid(const FakeQuantArgs& fq) { return dtype_valid(fq.dtype) && fq.numel >= 0; }

bool abs_max_bits_valid(int32_t bits) { return bits >= 2 && bits <= 16; }

// The observers' quant-dequant has no seed: the deterministic modes only.
bool deterministic(Rounding rounding) { return rounding == Rounding::kHalfEven || rounding == Rounding::kHalfAway; }

ReduceArgs whole_tensor(const FakeQuantArgs& fq) {
  ReduceArgs r;
  r.dtype = fq.dtype;
  r.input = fq.input;
  r.numel = fq.numel;
  return r;
}

cudaError_t quant_dequant_with_step(const FakeQuantArgs& fq, const ObserverWorkspace& w, int32_t bin_cnt,
                                    Rounding rounding, cudaStream_t stream) {
  PerTensorQParams qp;
  qp.scale = w.step;
  qp.zero_point = w.zero_point;
  qp.quant_min = -bin_cnt;
  qp.quant_max = bin_cnt;
  qp.rounding = rounding;
  return launch_fake_quant_per_tensor(fq, qp, stream);
}

// The abs-max observers, once their arguments are checked: in training the reduction's
// epilogue updates the state and writes the step, in eval the step comes from the stored
// scale; then the quant-dequant.
template <typename Epilogue, typename State>
cudaError_t abs_max_observer(const FakeQuantArgs& fq, const State& s, int32_t bits, Rounding rounding, bool training,
                             void* workspace, cudaStream_t stream) {
  if (fq.numel == 0) return cudaSuccess;
  const ReduceArgs args = whole_tensor(fq);
  const ObserverWorkspace w = carve(args, workspace);
  const int32_t bin_cnt = abs_max_bin_cnt(bits);
  if (training) {
    const Epilogue epilogue{{bin_cnt, w.step, w.zero_point}, s};
    const cudaError_t e = launch_reduce_with<ReduceKind::kAbsMax>(args, w.partials, epilogue, stream);
    if (e != cudaSuccess) return e;
  } else {
    abs_max_qparams_kernel<<<1, 1, 0, stream>>>(s.scale, bin_cnt, w.step, w.zero_point);
  }
  return quant_dequant_with_step(fq, w, bin_cnt, rounding, stream);
}

}  // namespace

ReducePath reduce_path(const ReduceArgs& args) { return reduce_plan(args).path; }

size_t reduce_workspace_bytes(const ReduceArgs& args) { return reduce_partials_bytes(args); }

cudaError_t launch_reduce(const ReduceArgs& args, ReduceKind kind, float* out_a, float* out_b, void* workspace,
                          cudaStream_t stream) {
  if (args.channels == 0) return cudaSuccess;  // an empty axis: nothing to reduce into
  if (!reduce_args_valid(args) || (kind != ReduceKind::kAbsMax && kind != ReduceKind::kMinMax)) {
    return cudaErrorInvalidValue;
  }
  const StoreEpilogue store{out_a, kind == ReduceKind::kMinMax ? out_b : nullptr};
  return kind == ReduceKind::kAbsMax ? launch_reduce_with<ReduceKind::kAbsMax>(args, workspace, store, stream)
                                     : launch_reduce_with<ReduceKind::kMinMax>(args, workspace, store, stream);
}

size_t observer_workspace_bytes(const ReduceArgs& args) {
  const size_t channels = static_cast<size_t>(std::max<int64_t>(args.channels, 0));
  return align_up(reduce_partials_bytes(args)) + 2 * align_up(channels * sizeof(float));
}

cudaError_t launch_fake_quant_moving_average_abs_max(const FakeQuantArgs& fq, const MovingAverageAbsMaxState& s,
                                                     int32_t bits, Rounding rounding, bool training, void* workspace,
                                                     cudaStream_t stream) {
  if (!fake_quant_args_valid(fq) || !abs_max_bits_valid(bits) || !deterministic(rounding)) return cudaErrorInvalidValue;
  return abs_max_observer<MovingAverageAbsMaxEpilogue>(fq, s, bits, rounding, training, workspace, stream);
}

cudaError_t launch_fake_quant_range_abs_max(const FakeQuantArgs& fq, const RangeAbsMaxState& s, int32_t bits,
                                            Rounding rounding, bool training, void* workspace, cudaStream_t stream) {
  if (!fake_quant_args_valid(fq) || !abs_max_bits_valid(bits) || !deterministic(rounding) || s.window_size <= 0) {
    return cudaErrorInvalidValue;
  }
  return abs_max_observer<RangeAbsMaxEpilogue>(fq, s, bits, rounding, training, workspace, stream);
}

cudaError_t launch_fused_moving_average_min_max(const FakeQuantArgs& fq, const MovingAverageMinMaxState& s,
                                                int64_t channel_stride, Rounding rounding, void* workspace,
                                                cudaStream_t stream) {
  ReduceArgs args = whole_tensor(fq);
  args.channels = s.channels;
  args.channel_stride = channel_stride;
  if (!fake_quant_args_valid(fq) || s.channels <= 0 || !reduce_args_valid(args) || !deterministic(rounding) ||
      !check_quant_range(s.quant_min, s.quant_max).empty()) {
    return cudaErrorInvalidValue;
  }
  if (fq.numel == 0) {
    moving_average_min_max_qparams_kernel<<<1, kReduceThreads, 0, stream>>>(s);
    return cudaGetLastError();
  }
  const ObserverWorkspace w = carve(args, workspace);
  const cudaError_t e = launch_reduce_with<ReduceKind::kMinMax>(
      args, w.partials, MovingAverageMinMaxEpilogue{s, w.step, w.zero_point}, stream);
  if (e != cudaSuccess) return e;
  if (s.channels == 1) {
    return launch_fake_quant_per_tensor(fq, min_max_per_tensor_qparams(s, w.step, w.zero_point, rounding), stream);
  }
  return launch_fake_quant_per_channel(
      fq, min_max_per_channel_qparams(s, w.step, w.zero_point, channel_stride, rounding), stream);
}

}  // namespace cuda
}  // namespace fakequant
