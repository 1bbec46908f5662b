#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_quant_math.cpp (tests/fuzz/corpus/): one small file per
named case, encoded the way the target's Input decodes it (first byte: the property; then
little-endian fields in the order the property reads them). Rerun after changing the
decoding, then check that `fakequant_fuzz_quant_math -runs=0 tests/fuzz/corpus` passes.

Files named `regression-*` are inputs that once found a bug; keep them.
"""
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Property selectors (the first byte; LLVMFuzzerTestOneInput's switch).
ROUNDING, HALF, BFLOAT16, QD_INT, QD_FLOAT, VALIDATORS, CHOOSE_QPARAMS, SCALES, KERNEL, MINIFLOAT = range(10)

# Indices into kSpecialFloats.
SPECIAL = {name: i for i, name in enumerate([
    "0", "-0", "0.5", "-0.5", "1.5", "-2.5", "0.49999997", "8388607.5", "-8388607.5", "2^23",
    "16777215", "16777217", "65504", "65519.996", "65520", "-65520", "2^-14", "2^-25", "2^-24",
    "1.5*2^-24", "2^-126", "max_subnormal", "2^-149", "max_bf16", "FLT_MAX", "-FLT_MAX", "inf",
    "-inf", "nan", "-nan", "snan", "nan_payload"])}


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def f32_bits(f):
    return struct.unpack("<I", struct.pack("<f", f))[0]


# any_float
def raw(f):
    return u8(0) + u32(f32_bits(f))


def raw_bits(bits):
    return u8(0) + u32(bits)


def special(name, ulps=0):
    return u8(2) + u8(SPECIAL[name]) + u8(ulps * 32)  # int8 / 32 steps


def grid(whole, frac256):
    """whole + frac256 / 256 (whole an int16)."""
    return u8(3) + u16(whole) + u8(frac256)


def tie(n, ulps=0):
    """n + 0.5, moved by ulps (|ulps| <= 3)."""
    return u8(4) + u32(n + 16777216) + u8(ulps)


def rounding_bits(top, low_index):
    return u8(5) + u32(top) + u8(low_index)


# any_scale
def scale_table(index):  # 1.0, 0.1, 1/3, 2^-7, 2^-126, FLT_MAX, 6.1e-5, 0.02, 2.0, 1e-3
    return u8(0) + u8(index)


def scale_invalid(float_bytes):
    return u8(7) + float_bytes


# any_range
def bits_range(bits, kind):  # kind 0 signed, 1 narrow, 2 unsigned
    return u8(0) + u8(bits - 2) + u8(kind)


def table_range(index):  # [-65536,-1] [0,65535] [-32768,32767] [-65535,0] [0,0] [-1,0] [0,1] [-1,1] ...
    return u8(3) + u8(index)


# any_element: t * scale, t an any_float, moved by ulps
def element(t, ulps=0):
    return u8(0) + t + u8(ulps)


HALF_EVEN, HALF_AWAY, STOCHASTIC = 0, 1, 2
F32, F16, BF16 = 0, 1, 2


def quant_dequant(prop, rng, scale, rounding, random, storage, zp_index, x, float_zp=b""):
    return u8(prop) + rng + scale + u8(rounding) + u32(random) + u8(storage) + u32(zp_index) + float_zp + x


def kernel(per_channel, float_zp, channels, inner, outer, rng, rounding, storage, seed, switches, split,
           placement, channel_params, elements=b""):
    """placement: element offset (bits 0-1) and mask byte offset (bits 2-4) of the buffers."""
    head = u8(KERNEL) + u8(per_channel)
    if per_channel:
        head += u8(float_zp) + u8(channels - 1) + u8(inner - 1) + u8(outer - 1)
    else:
        head += u8(outer - 1)
    head += rng + u8(rounding) + u8(storage) + u64(seed[0]) + u64(seed[1])
    head += u8(switches) + u8(split) + u8(placement)
    return head + b"".join(channel_params) + elements


def channel(scale, zp_index, frac=0, zp_out=1):
    """scale bytes, zero point index, frac (1: +0.25 for float zero points), zp_out (0: out of range)."""
    return scale + u32(zp_index) + u8(frac) + u8(zp_out)


def bound_edge(index, delta=0):
    return u8(0) + u8(index) + u8(delta)


def bound_raw(v):
    return u8(1) + u64(v)


CASES = {
    # Rounding: ties of every kind, the 2^23 cut, signed zeros, non-finite values.
    "rounding-tie-2.5": u8(ROUNDING) + grid(2, 128) + u32(0),
    "rounding-tie-minus-2.5": u8(ROUNDING) + grid(-3, 128) + u32(0xFFFFFFFF),
    "rounding-below-half": u8(ROUNDING) + special("0.49999997") + u32(0x80000000),
    "rounding-2^23-minus-half": u8(ROUNDING) + special("8388607.5") + u32(0x12345678),
    "rounding-negative-small": u8(ROUNDING) + grid(-1, 192) + u32(0xC0000000),
    "rounding-tie-nudged": u8(ROUNDING) + tie(-7, -1) + u32(0x7FFFFF00),
    "rounding-nan": u8(ROUNDING) + special("nan_payload") + u32(1),
    "rounding-subnormal": u8(ROUNDING) + raw_bits(0x80000001) + u32(0xFFFFFF00),
    # fp16 / bf16: overflow tie, subnormal ties, NaN, signed zero, bf16 ties.
    "fp16-overflow-tie": u8(HALF) + u16(0x7BFF) + special("65520"),
    "fp16-below-overflow": u8(HALF) + u16(0xFBFF) + special("65519.996"),
    "fp16-subnormal-tie": u8(HALF) + u16(0x0001) + special("2^-25"),
    "fp16-subnormal-tie-odd": u8(HALF) + u16(0x03FF) + special("1.5*2^-24"),
    "fp16-nan": u8(HALF) + u16(0x7E01) + special("snan"),
    "fp16-negative-zero": u8(HALF) + u16(0x8000) + special("-0"),
    "fp16-rounding-bits": u8(HALF) + u16(0x3C00) + rounding_bits(0x3F800000, 1),
    "bf16-max": u8(BFLOAT16) + u16(0x7F7F) + special("FLT_MAX"),
    "bf16-tie": u8(BFLOAT16) + u16(0x0001) + rounding_bits(0x3F820000, 6),
    "bf16-subnormal": u8(BFLOAT16) + u16(0x8001) + special("max_subnormal"),
    "bf16-nan": u8(BFLOAT16) + u16(0xFFC1) + special("-nan"),
    # Quant-dequant, integer zero point.
    "qd-int8-tie": quant_dequant(QD_INT, bits_range(8, 0), scale_table(0), HALF_EVEN, 0, F32, 128,
                                 element(grid(0, 128))),
    "qd-int8-upper-tie": quant_dequant(QD_INT, bits_range(8, 0), scale_table(3), HALF_EVEN, 0, F32, 128,
                                       element(tie(127))),
    "qd-uint8-zero-point": quant_dequant(QD_INT, bits_range(8, 2), scale_table(7), HALF_AWAY, 0, F16, 128,
                                         element(tie(-129, 1))),
    "qd-int4-stochastic": quant_dequant(QD_INT, bits_range(4, 1), scale_table(2), STOCHASTIC, 0xDEADBEEF, BF16, 3,
                                        element(grid(5, 77))),
    "qd-16bit-huge": quant_dequant(QD_INT, table_range(1), scale_table(4), HALF_EVEN, 0, F32, 65535,
                                   element(special("FLT_MAX"))),
    "qd-negative-infinity": quant_dequant(QD_INT, table_range(0), scale_table(5), HALF_AWAY, 0, F32, 0,
                                          element(special("-inf"))),
    "qd-nan-keeps-bits": quant_dequant(QD_INT, bits_range(2, 0), scale_table(1), STOCHASTIC, 0, F32, 1,
                                       u8(3) + special("nan_payload")),
    # Quant-dequant, float zero point.
    "qd-float-zp-fraction": quant_dequant(QD_FLOAT, bits_range(8, 0), scale_table(0), HALF_EVEN, 0, F32, 128,
                                          element(grid(1, 128)), float_zp=u8(1) + u16(0x8000)),
    "qd-float-zp-tiny": quant_dequant(QD_FLOAT, bits_range(8, 2), scale_table(6), HALF_AWAY, 0, BF16, 0,
                                      element(grid(0, 200)), float_zp=u8(2) + special("2^-149")),
    "qd-float-zp-stochastic": quant_dequant(QD_FLOAT, bits_range(6, 0), scale_table(8), STOCHASTIC, 0x00000100,
                                            F16, 40, element(tie(3, 2)), float_zp=u8(1) + u16(0x4000)),
    # ATen levels are integers: a small negative x with a zero point of +0 gives +0, not -0.
    "regression-float-zp-negative-zero": quant_dequant(QD_FLOAT, bits_range(8, 0), scale_table(0), HALF_EVEN, 0,
                                                       F32, 128, element(grid(-1, 192)),
                                                       float_zp=u8(3) + u8(0)),
    # Validators: the accepted edges, the int64 limits, eps around its rounding points.
    "validators-edges": u8(VALIDATORS) + bound_edge(1) + bound_edge(7) + bound_edge(4) + raw_bits(0x00800000)
    + u8(2) + u8(0) + u8(0) + u8(1) + raw(0.5) + u8(0) + u8(0) + u8(0),
    "validators-65537-levels": u8(VALIDATORS) + bound_edge(1) + bound_edge(4) + bound_edge(0, 2)
    + raw_bits(0x007FFFFF) + u8(2) + u8(2) + u8(1) + u8(1) + u8(0) + u8(0) + u8(2),
    "validators-int64-limits": u8(VALIDATORS) + bound_edge(9) + bound_edge(10) + bound_raw(-(1 << 63))
    + special("inf") + u8(1) + u64(0x7FF8000000000001) + u8(11) + u8(1) + b"half_even\x00st",
    "validators-symmetric": u8(VALIDATORS) + u8(2) + u32(131072 - 128) + u8(2) + u32(131072 + 127)
    + u8(2) + u32(131072) + raw(1e-3) + u8(2) + u8(3) + u8(0) + u8(1) + special("nan") + u8(0) + u8(0) + u8(8),
    # choose_qparams: the documented cases of docs/numerics.md.
    "choose-unobserved": u8(CHOOSE_QPARAMS) + bits_range(8, 2) + u8(0) + u8(0) + raw(0.0) + raw(0.0) + u8(1),
    "choose-symmetric": u8(CHOOSE_QPARAMS) + bits_range(8, 0) + u8(1) + u8(0) + raw(-3.0) + raw(5.0) + u8(0),
    "choose-small-scale": u8(CHOOSE_QPARAMS) + bits_range(8, 2) + u8(0) + u8(0) + raw(0.0) + raw(1e-7) + u8(0),
    "choose-one-sided-small": u8(CHOOSE_QPARAMS) + bits_range(8, 0) + u8(0) + u8(1) + raw(-1e-6) + raw(0.0)
    + u8(0),
    "choose-both-sides-small": u8(CHOOSE_QPARAMS) + bits_range(16, 0) + u8(0) + u8(0) + raw(-2e-6) + raw(3e-6)
    + u8(0),
    "choose-nan": u8(CHOOSE_QPARAMS) + bits_range(8, 0) + u8(1) + u8(0) + special("nan") + raw(1.0) + u8(2),
    "choose-infinite": u8(CHOOSE_QPARAMS) + bits_range(4, 2) + u8(0) + u8(1) + special("-inf") + raw(2.0) + u8(0),
    "choose-huge-two-levels": u8(CHOOSE_QPARAMS) + table_range(6) + u8(1) + u8(0) + special("-FLT_MAX")
    + special("FLT_MAX") + u8(0),
    # The symmetric weight scale and the learnable zero point roundings (numerics.md's table).
    "scales-zero-point-2.5": u8(SCALES) + u16(126) + u8(1) + raw(3.0) + raw(1.1920929e-07) + raw(2.5)
    + bits_range(8, 0),
    "scales-zero-point-minus-1.2": u8(SCALES) + u16(126) + u8(0) + raw(0.0) + raw(1.0) + raw(-1.2)
    + bits_range(8, 0),
    "scales-zero-point-minus-2.7": u8(SCALES) + u16(6) + u8(1) + special("nan") + special("2^-126") + raw(-2.7)
    + bits_range(4, 0),
    "scales-zero-point-300": u8(SCALES) + u16(65534) + u8(1) + special("inf") + raw(1e-30) + raw(300.0)
    + bits_range(8, 0),
    # Minifloat rounding (check_minifloat): format (0 E4M3, 1 E5M2, 2 E3M2, 3 E2M3, 4 E2M1),
    # rounding, random word, then a value: 0 any_float, 1 a grid value (index, ulps * 32), 2 a
    # midpoint of neighbours (index, ulps * 32); bit 2 of that kind byte negates.
    "minifloat-e2m1-tie-even": u8(MINIFLOAT) + u8(4) + u8(0) + u32(0) + u8(2) + u8(4) + u8(0),
    "minifloat-e2m1-tie-away-negative": u8(MINIFLOAT) + u8(4) + u8(1) + u32(0) + u8(5) + u8(5) + u8(0),
    "minifloat-e4m3-subnormal-tie": u8(MINIFLOAT) + u8(0) + u8(0) + u32(0) + u8(2) + u8(0) + u8(0),
    "minifloat-e4m3-stochastic-below-max": u8(MINIFLOAT) + u8(0) + u8(2) + u32(0xFFFFFFFF) + u8(2) + u8(125)
    + u8(0),
    "minifloat-e5m2-saturates": u8(MINIFLOAT) + u8(1) + u8(0) + u32(0) + u8(0) + raw(60000.0),
    "minifloat-e3m2-nan": u8(MINIFLOAT) + u8(2) + u8(1) + u32(0) + u8(0) + special("nan_payload"),
    "minifloat-e2m3-grid-nudged": u8(MINIFLOAT) + u8(3) + u8(2) + u32(0x80000000) + u8(1) + u8(10) + u8(32),
    "minifloat-stochastic-negative-zero": u8(MINIFLOAT) + u8(3) + u8(2) + u32(0x2000004) + u8(0) + special("-0"),
    # The CPU kernels.
    "kernel-per-tensor-67": kernel(0, 0, 1, 1, 67, bits_range(8, 0), HALF_EVEN, F32, (1, 2), 0, 3, 0,
                                   [channel(scale_table(7), 128)]),
    "kernel-per-tensor-stochastic-split": kernel(0, 0, 1, 1, 61, bits_range(8, 2), STOCHASTIC, BF16,
                                                 (0x0123456789ABCDEF, 7), 0, 5, 1 + (1 << 2),
                                                 [channel(scale_table(2), 3)],
                                                 element(tie(2)) + element(grid(-1, 1))),
    "kernel-per-channel-float-zp": kernel(1, 1, 3, 2, 4, bits_range(8, 0), HALF_AWAY, F16, (5, 6), 0, 2,
                                          3 + (7 << 2),
                                          [channel(scale_table(0), 128, 1), channel(scale_table(1), 100),
                                           channel(scale_table(9), 3, 1)],
                                          element(tie(-1)) + element(special("-0")) + element(grid(-1, 192))),
    "kernel-per-channel-stochastic": kernel(1, 0, 5, 1, 3, bits_range(4, 0), STOCHASTIC, F32, (99, 1 << 40), 0, 1,
                                            2 + (3 << 2),
                                            [channel(scale_table(i), i) for i in range(5)]),
    "kernel-disabled": kernel(1, 0, 2, 3, 2, bits_range(8, 0), HALF_EVEN, BF16, (0, 0), 31, 1, 1,
                              [channel(scale_table(0), 0), channel(scale_table(1), 1)]),
    "kernel-invalid-qparams": kernel(1, 1, 2, 1, 5, bits_range(8, 2), HALF_EVEN, F16, (0, 0), 16, 0, 1 << 2,
                                     [channel(scale_invalid(special("nan")), 5), channel(scale_table(0), 5, 0, 0)]),
}


def main():
    out = os.path.join(HERE, "corpus")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    for name, data in sorted(CASES.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(CASES)} seeds, {sum(len(d) for d in CASES.values())} bytes, in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
