"""Float32 vs PTQ vs QAT for three LLM formats, on a character-level transformer trained on the
CPython standard library's own source (on every machine: nothing is downloaded).

    python -m fakequant.examples.char_lm [--steps N] [--qat-steps N] [--threads N] [--out F] [--quick]

1. Train a float GPT-style model (pre-norm blocks, causal attention, GELU MLP) on fixed stdlib
   modules; other fixed modules are the validation text (a split by file: no shared lines).
2. PTQ: the same weights evaluated with fake quantization on: the weights and the input
   activations of every Linear in the transformer blocks (qkv, attention out, both MLP layers).
   The embedding (a lookup) and the output head (it feeds the softmax directly) stay float, a
   common choice in LLM quantization; the attention's score and value products are not Linear
   layers and stay float too.
3. QAT: fine-tune the float model for --qat-steps with fake quantization on, then evaluate.
4. Two float references for those extra steps: the float model fine-tuned for the same steps on
   the same batches at the same learning rate ("float+ft"), and that model under PTQ
   ("PTQ(ft)"), so that QAT's gain is not just more training.

Criterion: QAT recovers at least half of the perplexity gap PTQ leaves, against two references:
    recovered     = (ppl_ptq     - ppl_qat) / (ppl_ptq     - ppl_float)     >= 0.5  (required)
    recovered_ft  = (ppl_ptq(ft) - ppl_qat) / (ppl_ptq(ft) - ppl_float+ft)  >= 0.5  (budget-matched)
the second compares QAT with what the same training budget gives without QAT.

Deterministic for a given torch build and --threads (fixed seeds, fixed batch order; the
fine-tuning runs share one batch sequence). CPU only.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import math
import platform
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fakequant as fq

# Stable stdlib modules, single files in CPython 3.9 through 3.14 (not removed, not turned into
# packages). The texts differ a little between Python versions: the JSON records sizes and a hash.
TRAIN_MODULES = sorted([
    "argparse", "ast", "bisect", "calendar", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "heapq", "inspect", "pprint", "queue",
    "operator", "random", "shlex", "shutil", "tarfile", "textwrap", "threading", "tokenize", "typing",
])
VAL_MODULES = sorted(["difflib", "statistics", "tempfile", "uuid"])
QUICK_TRAIN_MODULES = ["bisect", "copy", "fnmatch", "glob", "numbers", "queue", "shlex"]
QUICK_VAL_MODULES = ["getopt"]

# Newline and printable ASCII; anything else (a few non-ASCII characters, tabs) is one "unknown".
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1


# The formats: (activation fake-quantizer, weight fake-quantizer), each of a 2-d tensor whose
# blocks run along the last dim: a Linear's reduction dim for both its input and its weight.
FORMATS = {
    # int8 dynamic per-token asymmetric activations, int4 symmetric weights in groups of 32
    "8da4w": (lambda x: fq.fake_quantize_per_token(x)[0], lambda w: fq.fake_quantize_per_group(w, 32, -8, 7)[0]),
    # E2M1 elements in blocks of 32 with E8M0 scales, weights and activations alike; "rceil"
    # (torchao's MX inference default, cuBLAS's rule) never saturates a block's largest element
    "mxfp4": (lambda x: fq.fake_quantize_mx(x, "e2m1", 32, scale_mode="rceil")[0],) * 2,
    # E2M1 elements in blocks of 16 with E4M3 block scales and a per-tensor scale amax / (448 * 6)
    "nvfp4": (lambda x: fq.fake_quantize_nvfp4(x, per_tensor_scale=True)[0],) * 2,
}

# Sized for about 12 minutes on one CPU core. QAT runs long next to the float training (1500
# against 2000 steps) because this small model is still far from converged: shorter QAT loses
# to the float fine-tuning's progress (docs/llm-qat.md).
FULL = dict(d_model=96, n_layer=2, context=64, batch=32, steps=2000, qat_steps=1500, lr=3e-3, ft_lr=6e-4,
            lr_floor=0.01, train_modules=TRAIN_MODULES, val_modules=VAL_MODULES)
QUICK = dict(d_model=64, n_layer=1, context=64, batch=16, steps=400, qat_steps=60, lr=1e-2, ft_lr=1e-3,
             lr_floor=0.1, train_modules=QUICK_TRAIN_MODULES, val_modules=QUICK_VAL_MODULES)


def load_text(modules):
    """The modules' source, concatenated in the given order, and (file name, characters) rows."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [(root / f"{m}.py").read_text(encoding="utf-8") for m in modules]
    return "".join(texts), [(f"{m}.py", len(t)) for m, t in zip(modules, texts)]


def encode(text):
    table = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([table.get(c, UNKNOWN) for c in text], dtype=torch.long)


class QLinear(nn.Linear):
    """A Linear whose input and weight go through the fake quantizers of ``fmt`` when it is set."""

    fmt = None

    def forward(self, x):
        if self.fmt is None:
            return super().forward(x)
        act, weight = FORMATS[self.fmt]
        # As a [tokens, features] matrix: one row per token, blocks along the features; NVFP4's
        # tensor scale covers the whole batch, as a deployed kernel's would
        rows = act(x.reshape(-1, x.shape[-1]))
        return F.linear(rows, weight(self.weight), self.bias).reshape(*x.shape[:-1], -1)


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = QLinear(d, 3 * d, bias=False), QLinear(d, d, bias=False)
        self.fc1, self.fc2 = QLinear(d, 4 * d, bias=False), QLinear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CharLM(nn.Module):
    def __init__(self, d_model, n_layer, context):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB_SIZE, d_model), nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, d_model // 32) for _ in range(n_layer))
        self.ln, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, VOCAB_SIZE, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def set_format(model, fmt):
    for m in model.modules():
        if isinstance(m, QLinear):
            m.fmt = fmt
    return model


def train(model, data, steps, lr, cfg, seed, warmup=0):
    """AdamW (a fresh one: the float fine-tuning and every QAT run start alike), linear warmup,
    then cosine decay to lr * lr_floor; batches of random windows drawn by a generator seeded
    with ``seed`` (the same seed, the same batches). Returns the seconds taken."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    start, T, floor = time.perf_counter(), cfg["context"], cfg["lr_floor"]
    model.train()
    for step in range(steps):
        ramp = (step + 1) / warmup if step < warmup else 1.0
        cosine = 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * ramp * (floor + (1 - floor) * cosine)
        at = torch.randint(len(data) - T - 1, (cfg["batch"],), generator=gen)
        batch = torch.stack([data[i:i + T + 1] for i in at.tolist()])
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def perplexity(model, data, cfg, fmt=None):
    """exp(mean next-character loss) over consecutive windows of the validation text."""
    T = cfg["context"]
    windows = data[: (len(data) - 1) // T * T + 1]
    inputs, targets = windows[:-1].view(-1, T), windows[1:].view(-1, T)
    model.eval()
    set_format(model, fmt)
    total = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item() for x, y in
                zip(inputs.split(64), targets.split(64)))
    set_format(model, None)
    return math.exp(total / targets.numel())


def recovered(ppl_ptq, ppl_qat, ppl_reference):
    """The fraction of PTQ's perplexity gap to the reference that QAT wins back (None: no gap)."""
    return (ppl_ptq - ppl_qat) / (ppl_ptq - ppl_reference) if ppl_ptq > ppl_reference else None


def run(cfg, seed, log=lambda msg: print(msg, flush=True)):
    train_text, train_files = load_text(cfg["train_modules"])
    val_text, val_files = load_text(cfg["val_modules"])
    train_data, val_data = encode(train_text), encode(val_text)
    torch.manual_seed(seed)
    model = CharLM(cfg["d_model"], cfg["n_layer"], cfg["context"])
    log(f"float training: {cfg['steps']} steps")
    secs = {"float": train(model, train_data, cfg["steps"], cfg["lr"], cfg, seed, warmup=cfg["steps"] // 20)}
    ppl = {"float": perplexity(model, val_data, cfg)}
    ft = copy.deepcopy(model)
    log(f"float fine-tuning: {cfg['qat_steps']} steps")
    secs["float_ft"] = train(ft, train_data, cfg["qat_steps"], cfg["ft_lr"], cfg, seed + 1)
    ppl["float_ft"] = perplexity(ft, val_data, cfg)
    formats = {}
    for name in FORMATS:
        log(f"{name}: PTQ, then QAT for {cfg['qat_steps']} steps")
        t0 = time.perf_counter()
        r = {"ppl_ptq": perplexity(model, val_data, cfg, name), "ppl_ptq_ft": perplexity(ft, val_data, cfg, name)}
        r["ptq_eval_s"] = (time.perf_counter() - t0) / 2
        qat = set_format(copy.deepcopy(model), name)
        r["qat_train_s"] = train(qat, train_data, cfg["qat_steps"], cfg["ft_lr"], cfg, seed + 1)
        r["ppl_qat"] = perplexity(qat, val_data, cfg, name)
        r["recovered"] = recovered(r["ppl_ptq"], r["ppl_qat"], ppl["float"])
        r["recovered_ft"] = recovered(r["ppl_ptq_ft"], r["ppl_qat"], ppl["float_ft"])
        # None where PTQ left no gap to recover (possible for an undertrained --quick model)
        r["meets_required"] = None if r["recovered"] is None else r["recovered"] >= 0.5
        r["meets_budget_matched"] = None if r["recovered_ft"] is None else r["recovered_ft"] >= 0.5
        formats[name] = r
    return {
        "ppl_float": ppl["float"], "ppl_float_ft": ppl["float_ft"], "float_train_s": secs["float"],
        "float_ft_train_s": secs["float_ft"], "formats": formats,
        "data": {"train_files": train_files, "val_files": val_files, "train_chars": len(train_text),
                 "val_chars": len(val_text),
                 "sha256": hashlib.sha256((train_text + "\0" + val_text).encode()).hexdigest()},
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }


def table(result):
    def frac(x, met):
        return f"{'no gap' if x is None else f'{x:.2f}':>6} {'met' if met else 'MISSED' if met is False else '':6}"

    rows = [f"float: ppl {result['ppl_float']:.3f}; float+ft: ppl {result['ppl_float_ft']:.3f}",
            f"{'format':8} {'PTQ':>7} {'PTQ(ft)':>7} {'QAT':>7}  {'recovered':13}  recovered_ft (each >= 0.5)"]
    for name, r in result["formats"].items():
        rows.append(f"{name:8} {r['ppl_ptq']:7.3f} {r['ppl_ptq_ft']:7.3f} {r['ppl_qat']:7.3f}  "
                    f"{frac(r['recovered'], r['meets_required'])}  "
                    f"{frac(r['recovered_ft'], r['meets_budget_matched'])}".rstrip())
    return "\n".join(rows)


def cpu_name():
    try:  # Linux; platform.processor() is empty there
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny model, few steps, small data (a smoke test)")
    p.add_argument("--steps", type=int, help="float training steps")
    p.add_argument("--qat-steps", type=int, help="QAT (and float fine-tuning) steps")
    # One thread by default: the model is small, and on a shared machine OpenMP threads wait on
    # each other. Results depend on the thread count (the float reductions split differently).
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in (("steps", args.steps), ("qat_steps", args.qat_steps)) if v is not None})
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    result = run(cfg, args.seed)
    result["context"] = {
        "torch_version": torch.__version__, "fakequant_version": fq.__version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "seed": args.seed, "quick": args.quick, "total_s": time.perf_counter() - start,
        "config": {k: v for k, v in cfg.items() if not k.endswith("_modules")}, "cpu": cpu_name(),
    }
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
