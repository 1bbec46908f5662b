#!/usr/bin/env python3
"""LLM-format fake quantization against torchao, the implementation LLM QAT users run.

For each op: fakequant's fused op, torchao's fake quantizer in eager mode, the same compiled
with ``torch.compile``, and a copy of the input (``x.clone()``: the bandwidth baseline), at LLM
weight and activation shapes, float32 and bfloat16, forward and forward + backward
(``y = f(x); y.backward(g)``), with the bytes each keeps for its backward (summed over the
distinct storages autograd saves). The ops:

- ``per_group_int4``: int4 symmetric per-group fake quant, groups of 32 along the last dim
  (torchao ``IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int4, group_size=32))``, the weight
  quantizer of its int4 / 8da4w QAT flows; fakequant ``fake_quantize_per_group``).
- ``per_token_int8``: int8 asymmetric per-token fake quant (the activation quantizer of 8da4w:
  torchao ``IntxFakeQuantizer`` ``PerToken``; fakequant ``fake_quantize_per_token``); the
  activation shape only.
- ``fp8_e4m3_row``: FP8 E4M3 scaled per row (torchao ``Float8FakeQuantizer`` ``PerRow``;
  fakequant ``fake_quantize_fp8``).
- ``mxfp4``: MX E2M1 in blocks of 32 with E8M0 scales, RCEIL (torchao ``MXTensor.to_mx`` then
  ``dequantize``, what its MX QAT linear computes, with a straight-through gradient written as
  ``x + (fq(x) - x).detach()``; fakequant ``fake_quantize_mx``).
- ``nvfp4``: NVFP4 with the per-tensor scale (torchao ``NVFP4Tensor.to_nvfp4`` then
  ``dequantize``, straight-through as above; fakequant ``fake_quantize_nvfp4``).

Timing: torch.utils.benchmark.Timer.blocked_autorange (the median of the blocks), the process's
intra-op threads; torch.compile runs are warmed up (compiled) before timing. Output: JSON
(``--out``), rendered by bench/render_report.py ``--llm``; ci/bench.sh runs it (with --quick in
CI) against the build it benchmarks.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
from torch.utils.benchmark import Timer

from bench_env import arguments, require_fakequant, run_context  # bench/ is the script's folder

fakequant = require_fakequant("bench_llm_formats.py")

warnings.filterwarnings("ignore")
try:
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import MXTensor
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.qat import Float8FakeQuantizeConfig, IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import Float8FakeQuantizer, IntxFakeQuantizer
except ImportError as e:  # pragma: no cover
    sys.exit(f"bench_llm_formats.py: needs torchao ({e})")

# (name, shape): LLM weights (a 4096 hidden layer's projections, an MLP up projection, a
# 128K-vocabulary embedding / head) and an activation of 8192 tokens.
SHAPES = [("weight 4096x4096", (4096, 4096)), ("weight 4096x14336", (4096, 14336)),
          ("weight 128256x4096", (128256, 4096)), ("activation 8192x4096", (8192, 4096))]
QUICK_SHAPES = [("weight 256x512", (256, 512)), ("activation 128x512", (128, 512))]
GROUP = 32
# Tensors of the input's size alive at torchao's eager forward + backward peak (the input, its
# gradient, the seed gradient and the intermediates autograd saves), with margin, per op: a
# shape is skipped for an op (and says so in the JSON) where this many copies would not fit in
# memory. Measured as the peak resident set of one eager forward + backward at 4096x4096 bf16
# over the input's size (2026-12-02: 9.1 per token, 9.6 per group, 15.1 FP8, 18.5 NVFP4,
# 19.1 MXFP4; their float32 intermediates are twice a bf16 input's size) plus the 3 copies
# held throughout.
PEAK_COPIES = {"per_group_int4": 14, "per_token_int8": 14, "fp8_e4m3_row": 20, "mxfp4": 24, "nvfp4": 24}


def fits(shape, dtype, device, op) -> bool:
    numel = 1
    for d in shape:
        numel *= d
    need = PEAK_COPIES[op] * numel * torch.tensor([], dtype=dtype).element_size()
    if device.type == "cuda":
        return need < torch.cuda.get_device_properties(device).total_memory
    return need < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


_INTX_GROUP = IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int4, group_size=GROUP))
_INTX_TOKEN = IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))
_FLOAT8_ROW = Float8FakeQuantizer(Float8FakeQuantizeConfig(torch.float8_e4m3fn, PerRow()))


def straight_through(fq):
    """torchao's MX / NVFP4 tensors are not differentiable: the gradient its QAT linears give
    the input is the straight-through one, written here as a user would."""
    return lambda x: x + (fq(x.detach()) - x).detach()


def _mx(x):
    return MXTensor.to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.RCEIL).dequantize(x.dtype)


def _nvfp4(x):
    scale = per_tensor_amax_to_scale(torch.max(torch.abs(x)))
    return NVFP4Tensor.to_nvfp4(x, per_tensor_scale=scale).dequantize(x.dtype)


# op -> (fakequant, torchao, the shape labels it runs on (None: all)).
OPS = {
    "per_group_int4": (lambda x: fakequant.fake_quantize_per_group(x, GROUP)[0], _INTX_GROUP, None),
    "per_token_int8": (lambda x: fakequant.fake_quantize_per_token(x)[0], _INTX_TOKEN, ("activation",)),
    "fp8_e4m3_row": (lambda x: fakequant.fake_quantize_fp8(x, "e4m3", granularity="row")[0], _FLOAT8_ROW, None),
    "mxfp4": (lambda x: fakequant.fake_quantize_mx(x, "e2m1", 32, "rceil")[0], straight_through(_mx), None),
    "nvfp4": (lambda x: fakequant.fake_quantize_nvfp4(x, True)[0], straight_through(_nvfp4), None),
}


def saved_bytes(fn, x) -> int:
    """Bytes of the distinct storages autograd saves for fn(x)'s backward (x included when
    saved: an op that keeps its input keeps it alive)."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def timed(stmt, min_run_time) -> float:
    stmt()  # first-call costs (allocator growth, compilation) are not the steady state
    m = Timer(stmt="stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return m.median * 1e3


def measure(label, shape, dtype, device, min_run_time, ops) -> list[dict]:
    x = (torch.randn(shape, device=device) * 2).to(dtype)
    g = torch.randn_like(x)
    xg = x.clone().requires_grad_()
    rows = []
    for op, (ours, theirs, labels) in OPS.items():
        if op not in ops or (labels is not None and not label.startswith(labels)):
            continue
        compiled = torch.compile(theirs, dynamic=False)
        impls = {"fakequant": ours, "torchao": theirs, "torchao_compiled": compiled,
                 "copy": lambda t: t.clone()}
        for name, fn in impls.items():
            row = {"op": op, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "impl": name}
            with torch.no_grad():
                row["forward_ms"] = timed(lambda: fn(x), min_run_time)
            if name != "copy":
                def step(fn=fn):
                    xg.grad = None
                    fn(xg).backward(g)
                row["forward_backward_ms"] = timed(step, min_run_time)
                row["saved_bytes"] = saved_bytes(fn, xg)
            rows.append(row)
        torch._dynamo.reset()
    return rows


def main() -> None:
    parser = arguments(__doc__, "one small shape, short timings (a check)")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of: " + ", ".join(OPS))
    a = parser.parse_args()
    ops = a.ops.split(",")
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"--ops: unknown {unknown}; accepted: {', '.join(OPS)}")
    device = torch.device(a.device)
    min_run_time = 0.05 if a.quick else 0.5
    report = {"context": run_context(a, device), "rows": []}
    for label, shape in QUICK_SHAPES if a.quick else SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            applicable = [op for op in ops if OPS[op][2] is None or label.startswith(OPS[op][2])]
            fitting = [op for op in applicable if fits(shape, dtype, device, op)]
            for op in applicable:
                if op not in fitting:
                    report["rows"].append({"label": label, "shape": list(shape), "op": op,
                                           "dtype": str(dtype).removeprefix("torch."),
                                           "skipped": f"{op} needs about {PEAK_COPIES[op]} copies of the input in memory"})
            for row in measure(label, shape, dtype, device, min_run_time, fitting):
                row["label"] = label
                report["rows"].append(row)
                print(json.dumps(row), file=sys.stderr)
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
