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
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer
except ImportError as e:  # pragma: no cover
    sys.exit(f"bench_llm_formats.py: needs torchao ({e})")

# (name, shape): LLM weights (a 4096 hidden layer's projections, an MLP up projection, a
# 128K-vocabulary embedding / head) and an activation of 8192 tokens.
SHAPES = [("weight 4096x4096", (4096, 4096)), ("weight 4096x14336", (4096, 14336)),
          ("weight 128256x4096", (128256, 4096)), ("activation 8192x4096", (8192, 4096))]
QUICK_SHAPES = [("weight 256x512", (256, 512))]
GROUP = 32
# Tensors of the input's size alive at torchao's eager forward + backward peak (the input, its
# gradient, the seed gradient and the intermediates autograd saves), with margin: a shape is
# skipped (and says so in the JSON) where this many copies would not fit in memory.
PEAK_COPIES = 12


def fits(shape, dtype, device) -> bool:
    numel = 1
    for d in shape:
        numel *= d
    need = PEAK_COPIES * numel * torch.tensor([], dtype=dtype).element_size()
    if device.type == "cuda":
        return need < torch.cuda.get_device_properties(device).total_memory
    return need < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def per_group_fakequant(x):
    return fakequant.fake_quantize_per_group(x, GROUP)[0]


_TORCHAO = IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int4, group_size=GROUP))


def per_group_torchao(x):
    return _TORCHAO(x)


OPS = {"per_group_int4": (per_group_fakequant, per_group_torchao)}


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


def measure(shape, dtype, device, min_run_time) -> list[dict]:
    x = (torch.randn(shape, device=device) * 2).to(dtype)
    g = torch.randn_like(x)
    xg = x.clone().requires_grad_()
    rows = []
    for op, (ours, theirs) in OPS.items():
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
    a = arguments(__doc__, "one small shape, short timings (a check)").parse_args()
    device = torch.device(a.device)
    min_run_time = 0.05 if a.quick else 0.5
    report = {"context": run_context(a, device), "rows": []}
    for label, shape in QUICK_SHAPES if a.quick else SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            if not fits(shape, dtype, device):
                report["rows"].append({"label": label, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                                       "skipped": f"needs about {PEAK_COPIES} copies of the input in memory"})
                continue
            for row in measure(shape, dtype, device, min_run_time):
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
