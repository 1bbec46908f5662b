"""ConvBnReLU2d QAT training step (forward + backward): fakequant.conv_bn_fake_quant against the
PyTorch ways of doing the same job.

Pairs (same shapes, same data, same run):
  running  fakequant (fold_mode="running")  vs torch.ao.nn.intrinsic.qat.ConvBnReLU2d with the
           per-channel symmetric qint8 weight FakeQuantize (PerChannelMinMaxObserver);
  batch    fakequant (fold_mode="batch")    vs the same math composed from PyTorch ops, linger style:
           conv + F.batch_norm (unfused, for the gradient), batch statistics, folded weight fake
           quantization (abs-max scales + fake_quantize_per_channel_affine), a second conv, the
           detach trick, ReLU.
ResNet-50 layer shapes, float32 and bfloat16 autocast. Time: median of repetitions (CUDA events
on the GPU, perf_counter on the CPU). Memory: peak allocated on the GPU
(torch.cuda.max_memory_allocated above the inputs); on the CPU the bytes of the tensors
autograd saves for backward (torch.autograd.graph.saved_tensors_hooks, storages counted once).

    python bench/bench_convbn_step.py --out results.json [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fakequant
from bench_env import commit, device_name  # bench/ is the script's folder

try:
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver, QConfig
except ImportError:  # torch.ao's legacy quantization stack is being retired
    nniqat = None

# (name, in, out, kernel, spatial)
SHAPES = [
    ("64x64_3x3_56", 64, 64, 3, 56),
    ("128x128_3x3_28", 128, 128, 3, 28),
    ("256x256_3x3_14", 256, 256, 3, 14),
    ("512x512_3x3_7", 512, 512, 3, 7),
    ("256x64_1x1_56", 256, 64, 1, 56),
]
QUICK_SHAPES = [("16x16_3x3_14", 16, 16, 3, 14), ("32x16_1x1_8", 32, 16, 1, 8)]
EPS, MOMENTUM = 1e-5, 0.1


def qconfig():
    weight = FakeQuantize.with_args(observer=PerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return QConfig(activation=torch.nn.Identity, weight=weight)


class Layer:
    """Parameters and buffers of one ConvBnReLU2d, shared by all the variants."""

    def __init__(self, cin, cout, k, device):
        self.k = k
        self.w = (torch.randn(cout, cin, k, k, device=device) * (2.0 / (cin * k * k)) ** 0.5).requires_grad_()
        self.gamma = (torch.rand(cout, device=device) + 0.5).requires_grad_()
        self.beta = torch.randn(cout, device=device).mul_(0.1).requires_grad_()
        self.rm = torch.zeros(cout, device=device)
        self.rv = torch.ones(cout, device=device)
        self.params = [self.w, self.gamma, self.beta]


def ours(layer: Layer, mode: str):
    def step(x):
        return fakequant.conv_bn_fake_quant(x, layer.w, None, layer.gamma, layer.beta, layer.rm, layer.rv,
                                            padding=layer.k // 2, eps=EPS, momentum=MOMENTUM, fold_mode=mode, relu=True)
    return step, layer.params


def torch_ao(layer: Layer, device):
    cout, cin, k, _ = layer.w.shape
    m = nniqat.ConvBnReLU2d(cin, cout, k, padding=k // 2, bias=False, eps=EPS, momentum=MOMENTUM,
                            qconfig=qconfig()).to(device)
    with torch.no_grad():
        m.weight.copy_(layer.w)
        m.bn.weight.copy_(layer.gamma)
        m.bn.bias.copy_(layer.beta)
    return m, list(m.parameters())


def linger_composite(layer: Layer):
    """Batch-mode ConvBN from PyTorch ops (linger's NormalizeConvBN2d pattern)."""
    rm, rv = layer.rm.clone(), layer.rv.clone()
    pad = layer.k // 2

    def step(x):
        gamma, beta = layer.gamma, layer.beta
        w = layer.w.view_as(layer.w)  # the weight of the unfused branch; Q's mask hooks its gradient
        z = F.conv2d(x, w, None, padding=pad)
        unfused = F.batch_norm(z, rm, rv, gamma, beta, training=True, momentum=MOMENTUM, eps=EPS)
        with torch.no_grad():
            zf = z.float()
            mean = zf.mean(dim=(0, 2, 3))
            var = zf.var(dim=(0, 2, 3), unbiased=False)
            s = gamma / torch.sqrt(var + EPS)
            fold = layer.w * s.reshape(-1, 1, 1, 1)
            scale = torch.clamp(fold.abs().amax(dim=(1, 2, 3)) / 127.5, min=torch.finfo(torch.float32).eps)
            zero = torch.zeros_like(scale, dtype=torch.int32)
            q = torch.round(fold / scale.reshape(-1, 1, 1, 1))
            mask = ((q >= -128) & (q <= 127)).to(fold.dtype)
            wq = torch.fake_quantize_per_channel_affine(fold, scale, zero, 0, -128, 127)
            fused = F.conv2d(x, wq, None, padding=pad) + (beta - s * mean).reshape(1, -1, 1, 1)
        w.register_hook(lambda g: g * mask)
        y = unfused + (fused - unfused).detach()
        return torch.relu(y)
    return step, layer.params


def saved_bytes(fn, x):
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(seen.values())


def run_step(fn, x, gy, params):
    y = fn(x)
    y.backward(gy)
    for p in params:
        p.grad = None


def time_step(fn, x, gy, params, reps, device, autocast_dtype):
    def once():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            run_step(fn, x, gy, params)

    for _ in range(max(2, reps // 5)):
        once()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        once()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            once()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = None
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        saved = saved_bytes(fn, x)
    return statistics.median(times), peak, saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32 on GPU, 4 on CPU)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    batch = args.batch or (2 if args.quick else (32 if device.type == "cuda" else 4))
    reps = args.reps or (3 if args.quick else (50 if device.type == "cuda" else 7))
    torch.manual_seed(0)

    results = []
    for name, cin, cout, k, hw in shapes:
        for dtype_name, autocast_dtype in (("float32", None), ("bfloat16_autocast", torch.bfloat16)):
            layer = Layer(cin, cout, k, device)
            x = torch.randn(batch, cin, hw, hw, device=device)
            gy = torch.randn(batch, cout, hw, hw, device=device)
            if autocast_dtype is not None:
                gy = gy.to(autocast_dtype)
            pairs = []
            if nniqat is not None:
                module, module_params = torch_ao(layer, device)
                pairs.append(("running", ours(layer, "running"), (module, module_params), "torch.ao ConvBnReLU2d"))
            pairs.append(("batch", ours(layer, "batch"), linger_composite(layer), "linger-style composite"))
            for pair, (fn, params), (base_fn, base_params), base_name in pairs:
                t_ours, peak_ours, saved_ours = time_step(fn, x, gy, params, reps, device, autocast_dtype)
                t_base, peak_base, saved_base = time_step(base_fn, x, gy, base_params, reps, device, autocast_dtype)
                row = dict(shape=name, batch=batch, dtype=dtype_name, mode=pair, baseline=base_name,
                           fakequant_ms=t_ours, baseline_ms=t_base, speedup=t_base / t_ours,
                           fakequant_saved_bytes=saved_ours, baseline_saved_bytes=saved_base,
                           saved_ratio=saved_ours / saved_base if saved_base else None)
                if peak_ours is not None:
                    row.update(fakequant_peak_bytes=peak_ours, baseline_peak_bytes=peak_base,
                               peak_ratio=peak_ours / peak_base if peak_base else None)
                results.append(row)
                print(f"{name:16s} {dtype_name:18s} {pair:8s} fakequant {t_ours:9.3f} ms  {base_name} "
                      f"{t_base:9.3f} ms  x{t_base / t_ours:5.2f}  saved {saved_ours / 1e6:8.2f} MB vs "
                      f"{saved_base / 1e6:8.2f} MB", flush=True)

    report = dict(benchmark="convbn_step", device=device_name(device), torch=torch.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(), commit=commit(),
                  threads=torch.get_num_threads(), quick=args.quick, results=results)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
