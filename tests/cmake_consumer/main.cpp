#include <cstdio>

#include "fakequant/fake_quant.h"

int main() {
  const float x[3] = {0.26f, -1.0f, 9.0f};
  float y[3];
  uint8_t mask[1];
  const float scale = 0.5f;
  const int32_t zp = 0;
  fakequant::fake_quant_per_tensor_cpu({fakequant::DType::kFloat32, x, y, mask, 3},
                                       {&scale, &zp, -4, 3, fakequant::Rounding::kHalfEven});
  // 0.26 -> q 1 -> 0.5; -1 -> q -2 -> -1; 9 -> q 18 -> clamp 3 -> 1.5 (out of range)
  const bool ok = y[0] == 0.5f && y[1] == -1.0f && y[2] == 1.5f && mask[0] == 0b011;
  std::printf("consumer: %s\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
