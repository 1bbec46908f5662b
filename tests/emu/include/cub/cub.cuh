// The parts of CUB the kernels use, in the emulated CUDA build (tests/emu).
#pragma once

#include "block/block_reduce.cuh"
