#!/usr/bin/env python3
"""Host-side overhead of fakequant from Python, against what PyTorch runs for the same job.

(a) Per-call cost of each public op at a tiny size (256 elements, where dispatch, argument
    checks, allocation and the kernel launch are the whole cost): fakequant's Python API
    function against the ATen op or composite doing the same job.
(b) One training step of a whole FakeQuantize module, forward + backward
    (``y = m(x); y.backward(g)``), fakequant.nn's classes against torch.ao.quantization's
    FakeQuantize (observer + fake quant) and FusedMovingAvgObsFakeQuantize (or
    _LearnableFakeQuantize), at a few sizes, float32 (torch.ao's fused modules take float32
    only).

Timing: torch.utils.benchmark.Timer.blocked_autorange (median of the blocks; on CUDA the
timer synchronises the device before each reading), with the process's intra-op thread
count. Output: JSON (``--out``), rendered into the report by bench/render_report.py
``--modules``. Run against a build with

    PYTHONPATH=torch_ext FAKEQUANT_LIBRARY=build/dev/torch_ext/libfakequant_ops.so \\
        python3 bench/bench_modules.py --quick --out modules.json
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
from torch.utils.benchmark import Timer

from bench_env import arguments, require_fakequant, run_context  # bench/ is the script's folder

fakequant = require_fakequant("bench_modules.py")
fqnn = fakequant.nn

warnings.filterwarnings("ignore", category=UserWarning)  # torch.ao's deprecation notices
warnings.filterwarnings("ignore", category=DeprecationWarning)
import torch.ao.quantization as tq  # noqa: E402

try:
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
except ImportError:  # pragma: no cover
    _LearnableFakeQuantize = None

CALL_NUMEL = 256


def measure(fn, min_run_time: float) -> dict:
    """Median (and IQR) of fn() in µs over Timer.blocked_autorange's blocks."""
    fn()  # first-call costs (lazy init, allocator growth) are not the steady state
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return {"median_us": m.median * 1e6, "iqr_us": m.iqr * 1e6, "blocks": len(m.times),
            "calls_per_block": m.number_per_run}


# ---------------------------------------------------------------------------------------
# (a) per-call cost


def op_calls(device: torch.device) -> list[tuple[str, object, object, str]]:
    """(op, fakequant call, ATen call or None, what the ATen side runs)."""
    n = CALL_NUMEL
    f32 = dict(device=device, dtype=torch.float32)
    x = torch.randn(n, **f32) * 2
    x2 = x.view(16, n // 16)
    g = torch.randn(n, **f32)
    scale = torch.tensor([0.02], **f32)
    zp = torch.tensor([3], device=device, dtype=torch.int32)
    cscale = torch.rand(16, **f32) * 0.02 + 0.01
    czp = torch.randint(-10, 10, (16,), device=device, dtype=torch.int32)
    _, mask = fakequant.fake_quantize_per_tensor_with_mask(x, scale, zp, -128, 127)
    bool_mask = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(x, 0.02, 3, -128, 127)[1]
    on = torch.ones(1, device=device, dtype=torch.long)

    def minmax_state(c):
        return [torch.full((c,), float("inf"), **f32), torch.full((c,), float("-inf"), **f32),
                torch.ones(c, **f32), torch.zeros(c, device=device, dtype=torch.int32)]

    fq_state, at_state = minmax_state(1), minmax_state(1)
    ma_fq = [torch.zeros(1, **f32) for _ in range(3)]
    ma_at = [torch.zeros(1, **f32) for _ in range(3)]
    at_zero = torch.zeros(1, device=device, dtype=torch.int32)
    window_fq, iter_fq = torch.zeros(16, **f32), torch.zeros(1, device=device, dtype=torch.long)
    range_fq_scale = torch.zeros(1, **f32)
    window_at = torch.zeros(16, **f32)
    at_iter = [0]
    lscale, lzp = torch.tensor([0.02], **f32), torch.tensor([3.0], **f32)
    lcscale, lczp = cscale.clone(), czp.float()
    wzeros = torch.zeros(16, device=device, dtype=torch.int32)

    def ma_abs_max_aten():
        scale_, state_, accum_ = ma_at
        cur = x.abs().amax()
        state_.mul_(0.9).add_(1.0)
        accum_.mul_(0.9).add_(cur)
        torch.div(accum_, state_, out=scale_)
        step = (scale_ / 127.0).clamp_min(1.17549435e-38)
        return torch.fake_quantize_per_tensor_affine(x, step, at_zero, -127, 127)

    def range_abs_max_aten():
        window_at[at_iter[0] % 16] = x.abs().amax()
        at_iter[0] += 1
        step = (window_at.amax().reshape(1) / 127.0).clamp_min(1.17549435e-38)
        return torch.fake_quantize_per_tensor_affine(x, step, at_zero, -127, 127)

    def weight_abs_max_aten():
        s = torch.clamp(x2.abs().amax(1) / 127.5, min=fakequant.FLOAT32_EPS)
        return torch.fake_quantize_per_channel_affine(x2, s, wzeros, 0, -128, 127)

    def stochastic_aten():
        q = torch.floor(x / 0.02 + torch.rand_like(x)) + 3
        return (q.clamp(-128, 127) - 3) * 0.02, (q >= -128) & (q <= 127)

    def no_autograd(fn):  # the op's C++ path alone: inference mode skips the Autograd dispatch key
        def call():
            with torch.inference_mode():
                return fn()
        return call

    return [
        ("fake_quantize_per_tensor", lambda: fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127),
         lambda: torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127),
         "`torch.fake_quantize_per_tensor_affine` (tensor qparams)"),
        ("fake_quantize_per_tensor (in torch.inference_mode)",
         no_autograd(lambda: fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127)),
         no_autograd(lambda: torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)),
         "the same, both in `torch.inference_mode()` (no autograd kernel runs)"),
        ("fake_quantize_per_tensor (stochastic)",
         lambda: fakequant.fake_quantize_per_tensor(x, scale, zp, -128, 127, "stochastic"), stochastic_aten,
         "composite `floor(x / s + rand_like(x))`, clamp, mask"),
        ("fake_quantize_per_channel", lambda: fakequant.fake_quantize_per_channel(x2, cscale, czp, 0, -128, 127),
         lambda: torch.fake_quantize_per_channel_affine(x2, cscale, czp, 0, -128, 127),
         "`torch.fake_quantize_per_channel_affine`"),
        ("masked_grad", lambda: fakequant.masked_grad(g, mask), lambda: g * bool_mask, "`grad * bool_mask`"),
        ("min_max", lambda: fakequant.min_max(x), lambda: torch.aminmax(x), "`torch.aminmax`"),
        ("abs_max", lambda: fakequant.abs_max(x), lambda: x.abs().amax(), "`x.abs().amax()`"),
        ("fused_moving_avg_obs_fake_quant",
         lambda: fakequant.fused_moving_avg_obs_fake_quant(x, on, on, *fq_state, 0.01, 0, 255),
         lambda: torch.fused_moving_avg_obs_fake_quant(x, on, on, *at_state, 0.01, 0, 255, 0),
         "`torch.fused_moving_avg_obs_fake_quant`"),
        ("fake_quantize_moving_average_abs_max",
         lambda: fakequant.fake_quantize_moving_average_abs_max(x, *ma_fq), ma_abs_max_aten,
         "abs-max, state update as tensor ops, tensor-qparam fake quant"),
        ("fake_quantize_range_abs_max",
         lambda: fakequant.fake_quantize_range_abs_max(x, range_fq_scale, window_fq, iter_fq), range_abs_max_aten,
         "abs-max into the window, window max, tensor-qparam fake quant"),
        ("fake_quantize_weight_abs_max", lambda: fakequant.fake_quantize_weight_abs_max(x2, 0, -128, 127),
         weight_abs_max_aten, "`amax(abs(w))`, clamp, `torch.fake_quantize_per_channel_affine`"),
        ("fake_quantize_learnable_per_tensor",
         lambda: fakequant.fake_quantize_learnable_per_tensor(x, lscale, lzp, 0, 255),
         lambda: torch._fake_quantize_learnable_per_tensor_affine(x, lscale, lzp, 0, 255),
         "`torch._fake_quantize_learnable_per_tensor_affine`"),
        ("fake_quantize_learnable_per_channel",
         lambda: fakequant.fake_quantize_learnable_per_channel(x2, lcscale, lczp, 0, 0, 255),
         lambda: torch._fake_quantize_learnable_per_channel_affine(x2, lcscale, lczp, 0, 0, 255),
         "`torch._fake_quantize_learnable_per_channel_affine`"),
    ]


# ---------------------------------------------------------------------------------------
# (b) FakeQuantize module steps


def ao_baselines(observer, qparams: dict, fused_observer=None, note: str = "") -> dict:
    """torch.ao's modules for the job: FakeQuantize over `observer` and FusedMovingAvgObsFakeQuantize
    over `fused_observer` (the same observer unless given), named with `note` where given."""
    fused_observer = fused_observer or observer
    return {
        f"FakeQuantize({observer.__name__}{', ' + note if note else ''})":
            lambda: tq.FakeQuantize(observer=observer, **qparams),
        f"FusedMovingAvgObsFakeQuantize{f'({note})' if note else ''}":
            lambda: tq.FusedMovingAvgObsFakeQuantize(observer=fused_observer, **qparams),
    }


def module_pairs():
    """(fakequant module factory, {torch.ao name: factory}, kind of input)."""
    mm = tq.MovingAverageMinMaxObserver
    pc = tq.MovingAveragePerChannelMinMaxObserver
    act = dict(quant_min=0, quant_max=255, dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    wpc = dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    sym = dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    pairs = [
        ("MovingAverageMinMaxFakeQuantize", lambda: fqnn.MovingAverageMinMaxFakeQuantize(**act),
         ao_baselines(mm, act), "activation"),
        ("MovingAveragePerChannelMinMaxFakeQuantize", lambda: fqnn.MovingAveragePerChannelMinMaxFakeQuantize(),
         ao_baselines(pc, wpc), "weight"),
        ("AbsMaxWeightFakeQuantize", lambda: fqnn.AbsMaxWeightFakeQuantize(),
         ao_baselines(tq.PerChannelMinMaxObserver, wpc, fused_observer=pc), "weight"),
        # Paddle's abs-max activation quantizer; torch.ao's nearest: symmetric moving-average min/max.
        ("MovingAverageAbsMaxFakeQuantize", lambda: fqnn.MovingAverageAbsMaxFakeQuantize(),
         ao_baselines(mm, sym, note="symmetric"), "activation"),
    ]
    if _LearnableFakeQuantize is not None:
        def ao_learnable():
            m = _LearnableFakeQuantize(mm, **act)
            m.enable_param_learning()
            return m
        pairs.append(("LearnableFakeQuantize", lambda: fqnn.LearnableFakeQuantize(**act),
                      {"_LearnableFakeQuantize (param learning)": ao_learnable}, "activation"))
    return pairs


def module_shapes(kind: str, quick: bool) -> list[tuple[int, ...]]:
    if kind == "weight":  # [64, 64], ResNet-50 conv weights, the 4096 x 4096 Linear
        return [(64, 64), (256, 64, 1, 1)] if quick else [(64, 64), (512, 512, 3, 3), (4096, 4096)]
    return [(64, 64), (4, 64, 16, 16)] if quick else [(64, 64), (8, 64, 32, 32), (32, 64, 56, 56)]


def module_step(module: torch.nn.Module, shape, device) -> object:
    module.to(device)
    x = (torch.randn(shape, device=device) * 2).requires_grad_()
    g = torch.randn(shape, device=device)

    def step():
        y = module(x)
        y.backward(g)
        x.grad = None
        module.zero_grad(set_to_none=True)

    step()  # initialises lazily sized state (per-channel buffers, learnable init) on both sides
    return step


# ---------------------------------------------------------------------------------------


def main() -> None:
    a = arguments(__doc__, "two sizes per module, short timings (a check)").parse_args()
    device = torch.device(a.device)
    min_run_time = 0.05 if a.quick else 0.3
    torch.manual_seed(0)

    context = run_context(a, device, library=fakequant.library_path(),
                          timer="torch.utils.benchmark.Timer.blocked_autorange, median", min_run_time_s=min_run_time,
                          load_avg=list(os.getloadavg()), num_cpus=os.cpu_count())

    calls = []
    for op, ours, aten, how in op_calls(device):
        rec = {"op": op, "numel": CALL_NUMEL, "dtype": "fp32", "aten_way": how, "fakequant": measure(ours, min_run_time)}
        rec["aten"] = measure(aten, min_run_time) if aten is not None else None
        calls.append(rec)
        print(f"call {op:40s} fakequant {rec['fakequant']['median_us']:8.2f} us   "
              f"ATen {rec['aten']['median_us'] if rec['aten'] else float('nan'):8.2f} us", file=sys.stderr)

    steps = []
    for name, ours, baselines, kind in module_pairs():
        for shape in module_shapes(kind, a.quick):
            rec = {"module": name, "shape": list(shape), "numel": int(torch.Size(shape).numel()), "dtype": "fp32",
                   "fakequant": measure(module_step(ours(), shape, device), min_run_time), "baselines": {}}
            for bname, make in baselines.items():
                rec["baselines"][bname] = measure(module_step(make(), shape, device), min_run_time)
            steps.append(rec)
            print(f"step {name:42s} {str(shape):18s} fakequant {rec['fakequant']['median_us']:10.1f} us   "
                  + "   ".join(f"{b} {v['median_us']:.1f} us" for b, v in rec["baselines"].items()), file=sys.stderr)

    text = json.dumps({"context": context, "calls": calls, "modules": steps}, indent=1) + "\n"
    if a.out:
        a.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
