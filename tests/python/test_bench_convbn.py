"""The ConvBN training-step benchmark runs (--quick) and writes its JSON, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_convbn_step.py"


def test_bench_convbn_step_quick(tmp_path):
    out = tmp_path / "convbn.json"
    subprocess.run([sys.executable, str(BENCH), "--quick", "--device", "cpu", "--threads", "1", "--out", str(out)],
                   check=True, timeout=120)
    report = json.loads(out.read_text())
    for key in ("device", "torch", "date", "commit", "results"):
        assert key in report
    modes = {r["mode"] for r in report["results"]}
    assert "batch" in modes
    for r in report["results"]:
        assert r["fakequant_ms"] > 0 and r["baseline_ms"] > 0
        assert r["fakequant_saved_bytes"] > 0 and r["baseline_saved_bytes"] > 0
