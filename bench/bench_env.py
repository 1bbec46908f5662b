"""The identity of a benchmark run, written once: the device's name and the commit measured.

Used by the Python benchmarks (which also import fakequant through ``require_fakequant``) and by
ci/bench.sh from the shell:

    python3 bench/bench_env.py device-name     # e.g. "NVIDIA H200", "CPU AMD EPYC 7B13"
    python3 bench/bench_env.py commit          # e.g. "3ce56d5e1a2b", "+dirty" if tracked files changed
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parent.parent


def device_name(device: torch.device | str | None = None) -> str:
    """The GPU's name for a CUDA device (the current one when None and CUDA is there), else
    "CPU <model name>" from /proc/cpuinfo."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {name}"


def commit() -> str:
    """The short (12-digit) hash of HEAD, with "+dirty" when tracked files differ from it;
    "unknown" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.check_output(["git", *args], cwd=_REPO, text=True, stderr=subprocess.DEVNULL).strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def arguments(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every Python benchmark takes: --quick, --out, --device, --context."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, help="JSON file to write (default: stdout)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                   help="extra context entries (ci/bench.sh passes device_name, date, commit)")
    return p


def run_context(args: argparse.Namespace, device: torch.device, **extra) -> dict:
    """What a result was measured on and when, the script's `extra` entries, and the --context
    entries on top of both."""
    context = {"device": device.type, "device_name": device_name(device), "threads": torch.get_num_threads(),
               "torch_version": torch.__version__, "cuda_version": torch.version.cuda or "none",
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "commit": commit(), "mode": "quick" if args.quick else "full", **extra}
    for kv in args.context:
        key, _, value = kv.partition("=")
        context[key] = value
    return context


def require_fakequant(script: str):
    """``import fakequant`` for a benchmark script, or exit with how to point it at a build."""
    try:
        import fakequant
    except ImportError as e:  # a message instead of a traceback
        raise SystemExit(f"{script}: cannot import fakequant ({e}); run with PYTHONPATH=torch_ext and "
                         "FAKEQUANT_LIBRARY=<build>/torch_ext/libfakequant_ops.so, or install the package")
    return fakequant


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["device-name", "commit"])
    args = parser.parse_args(argv)
    print(device_name() if args.what == "device-name" else commit())


if __name__ == "__main__":
    main()
