// From a runtime element type or rounding mode to a template argument, written once for the
// CPU reference and the CUDA launchers (the switch ladders they would otherwise each carry).
//
//   dispatch_dtype(a.dtype, cudaErrorInvalidValue, [&](auto t) {
//     using T = typename decltype(t)::type;          // float, Half or BFloat16
//     return launch_typed<T>(a, stream);
//   });
//   dispatch_rounding(qp.rounding, [&](auto r) { run<T, decltype(r)::value>(...); });
//
// With a `fallback`, an enumerator outside the enum returns it (a launcher's
// cudaErrorInvalidValue); without, such a call does nothing (callers validate first).
#pragma once

#include "fakequant/fake_quant.h"

namespace fakequant {

template <typename T>
struct TypeTag {
  using type = T;
};

template <Rounding R>
struct RoundingTag {
  static constexpr Rounding value = R;
};

template <typename Result, typename F>
Result dispatch_dtype(DType dtype, Result fallback, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(TypeTag<float>{});
    case DType::kFloat16:
      return f(TypeTag<Half>{});
    case DType::kBFloat16:
      return f(TypeTag<BFloat16>{});
  }
  return fallback;
}

// f with its result dropped (0 instead): the void forms of the dispatchers call the value forms.
template <typename F>
auto discard_result(F& f) {
  return [&f](auto tag) {
    f(tag);
    return 0;
  };
}

template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  dispatch_dtype(dtype, 0, discard_result(f));
}

template <typename Result, typename F>
Result dispatch_rounding(Rounding rounding, Result fallback, F&& f) {
  switch (rounding) {
    case Rounding::kHalfEven:
      return f(RoundingTag<Rounding::kHalfEven>{});
    case Rounding::kHalfAway:
      return f(RoundingTag<Rounding::kHalfAway>{});
    case Rounding::kStochastic:
      return f(RoundingTag<Rounding::kStochastic>{});
  }
  return fallback;
}

template <typename F>
void dispatch_rounding(Rounding rounding, F&& f) {
  dispatch_rounding(rounding, 0, discard_result(f));
}

}  // namespace fakequant
