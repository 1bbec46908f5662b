// The one definition of fakequant's scalar quantization math.
//
// Every function here is `__host__ __device__` (FQ_HD) and is used unchanged by the
// CPU reference (kernels/cpu) and the CUDA kernels (kernels/cuda), so the two paths can
// only differ in launch logic and reduction order. The contract is docs/numerics.md.
//
// The math lives in fakequant/math/, one header per topic, included here in dependency order:
// config (FQ_HD), float16, rounding, philox (stochastic rounding), quant_dequant, scales,
// observers, learnable, convbn, block (the block-scaled formats' minifloats and scales).
#pragma once

#include "fakequant/math/config.h"
#include "fakequant/math/float16.h"
#include "fakequant/math/rounding.h"
#include "fakequant/math/philox.h"
#include "fakequant/math/quant_dequant.h"
#include "fakequant/math/scales.h"
#include "fakequant/math/observers.h"
#include "fakequant/math/learnable.h"
#include "fakequant/math/convbn.h"
#include "fakequant/math/block.h"
