#!/usr/bin/env python3
"""The resource gate of the CUDA kernels: compiles every kernels/cuda/*.cu for each
architecture with `ptxas -v` and checks every kernel (every template instantiation):

  - no stack frame, no spill stores or loads (nothing in local memory);
  - registers at most the kernel's limit (LIMITS below; the default otherwise);
  - static shared memory at most the kernel's limit (and never above 48 KB).

Needs nvcc only (no GPU). Exits 1 and lists the offenders when a check fails. --markdown
writes the per-kernel table that docs/perf-notes.md records (the largest value over a
kernel's instantiations, per architecture).

usage: cuda_resources.py [--nvcc NVCC] [--archs 80;90] [--root DIR] [--jobs N] [--markdown FILE]
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

SOURCES = [
    "kernels/cuda/fake_quant_per_tensor.cu",
    "kernels/cuda/fake_quant_per_channel.cu",
    "kernels/cuda/observers.cu",
    "kernels/cuda/weight_quant.cu",
    "kernels/cuda/block_quant.cu",
    "kernels/cuda/learnable.cu",
    "kernels/cuda/convbn.cu",
]

# Registers: 64 a thread by default (256-thread blocks then fit 4 per multiprocessor, half
# the threads an SM can hold: enough to hide latency for these memory-bound loops). Static
# shared memory: 8 KB by default. Exceptions, with why:
DEFAULT_REGISTERS = 64
DEFAULT_SHARED = 8 * 1024
LIMITS = {
    # One thread per channel of per-channel double-precision scalar formulas (fold, moments,
    # parameter gradients): a few hundred threads in all, latency does not matter.
    "channels_kernel": {"registers": 128},
}
HARD_SHARED_LIMIT = 48 * 1024

ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\d+)'")
PROPS = re.compile(r"ptxas info\s*: Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"ptxas info\s*: Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes cumulative stack size)?"
                  r"(?:, (\d+) bytes smem)?")


def compile_report(nvcc, root, source, arch):
    """ptxas -v of one source for one architecture: {mangled entry: dict}."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-cubin", "-arch=sm_%s" % arch, "-I", os.path.join(root, "include"),
               "--expt-relaxed-constexpr", "-Xcompiler=-ffp-contract=off", "-Xptxas", "-v",
               "-o", os.path.join(tmp, "k.cubin"), os.path.join(root, source)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("nvcc failed on %s (sm_%s):\n%s" % (source, arch, proc.stderr))
    kernels, entry, props_of = {}, None, None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = ENTRY.search(line)
        if m:
            entry = m.group(1)
            kernels[entry] = {"source": source, "arch": arch, "frame": 0, "spill_stores": 0, "spill_loads": 0,
                              "registers": 0, "shared": 0, "cumulative_stack": 0}
            props_of = None
            continue
        m = PROPS.search(line)
        if m:
            props_of = m.group(1)
            continue
        m = FRAME.search(line)
        if m and entry is not None and props_of == entry:
            k = kernels[entry]
            k["frame"], k["spill_stores"], k["spill_loads"] = (int(g) for g in m.groups())
            continue
        m = USED.search(line)
        if m and entry is not None:
            k = kernels[entry]
            k["registers"] = int(m.group(1))
            k["cumulative_stack"] = int(m.group(2) or 0)
            k["shared"] = int(m.group(3) or 0)
    return kernels


def demangle(names):
    proc = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = proc.stdout.splitlines() if proc.returncode == 0 else names
    return dict(zip(names, out))


def base_name(demangled):
    """fake_quant_per_tensor_kernel from 'void fakequant::cuda::(anonymous namespace)::fake_quant_per_tensor_kernel<...>(...)'."""
    head = demangled.replace("(anonymous namespace)::", "")
    head = head.split("<", 1)[0].split("(", 1)[0]
    return head.rsplit("::", 1)[-1].split()[-1]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--archs", default="80;90")
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    archs = [a for a in re.split(r"[;,\s]+", args.archs) if a]
    jobs = [(s, a) for s in SOURCES for a in archs]
    kernels = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for report in pool.map(lambda job: compile_report(args.nvcc, args.root, *job), jobs):
            for mangled, k in report.items():
                kernels[(mangled, k["arch"])] = k
    names = demangle(sorted({m for m, _ in kernels}))
    failures, table = [], {}
    for (mangled, arch), k in sorted(kernels.items()):
        base = base_name(names[mangled])
        limit = LIMITS.get(base, {})
        max_regs = limit.get("registers", DEFAULT_REGISTERS)
        max_shared = min(limit.get("shared", DEFAULT_SHARED), HARD_SHARED_LIMIT)
        problems = []
        if k["frame"] or k["spill_stores"] or k["spill_loads"] or k["cumulative_stack"]:
            problems.append("local memory: %d bytes stack frame, %d/%d bytes spill stores/loads, %d bytes cumulative "
                            "stack" % (k["frame"], k["spill_stores"], k["spill_loads"], k["cumulative_stack"]))
        if k["registers"] > max_regs:
            problems.append("%d registers (limit %d)" % (k["registers"], max_regs))
        if k["shared"] > max_shared:
            problems.append("%d bytes static shared memory (limit %d)" % (k["shared"], max_shared))
        for p in problems:
            failures.append("sm_%s %s: %s\n    %s" % (arch, k["source"], p, names[mangled]))
        row = table.setdefault((k["source"], base, arch), {"n": 0, "registers": 0, "shared": 0, "local": 0})
        row["n"] += 1
        row["registers"] = max(row["registers"], k["registers"])
        row["shared"] = max(row["shared"], k["shared"])
        row["local"] = max(row["local"], k["frame"] + k["spill_stores"] + k["cumulative_stack"])
    print("cuda_resources: %d kernel instantiations over %d sources x %d architectures" %
          (len(kernels), len(SOURCES), len(archs)))
    if args.markdown:
        lines = ["| source | kernel | instantiations | " + " | ".join("sm_%s regs / smem B" % a for a in archs) +
                 " | register limit |",
                 "|---|---|---:|" + "---:|" * len(archs) + "---:|"]
        for source, base in sorted({(s, b) for s, b, _ in table}):
            cells = []
            for a in archs:
                r = table.get((source, base, a))
                cells.append("%d / %d" % (r["registers"], r["shared"]) if r else "-")
            n = max(table[(source, base, a)]["n"] for a in archs if (source, base, a) in table)
            lim = LIMITS.get(base, {}).get("registers", DEFAULT_REGISTERS)
            lines.append("| `%s` | `%s` | %d | %s | %d |" % (os.path.basename(source), base, n, " | ".join(cells), lim))
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    if failures:
        print("cuda_resources: %d problem(s):" % len(failures))
        for f in failures:
            print("  " + f)
        return 1
    print("cuda_resources: no stack frame, no spills; registers and shared memory within their limits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
