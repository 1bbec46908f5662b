"""The LLM-format benchmark runs (--quick) and writes its JSON, and the report renders it, so
neither can rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_llm_formats_quick_and_rendered(tmp_path):
    pytest.importorskip("torchao")
    out = tmp_path / "llm.json"
    subprocess.run([sys.executable, str(BENCH / "bench_llm_formats.py"), "--quick", "--device", "cpu", "--out",
                    str(out)], check=True, timeout=600)
    report = json.loads(out.read_text())
    for key in ("device_name", "torch_version", "date", "commit", "threads", "mode"):
        assert key in report["context"]
    impls = {(r["op"], r["dtype"], r["impl"]) for r in report["rows"]}
    for op in ("per_group_int4", "per_token_int8", "fp8_e4m3_row", "mxfp4", "nvfp4"):
        for dtype in ("float32", "bfloat16"):
            for impl in ("fakequant", "torchao", "torchao_compiled", "copy"):
                assert (op, dtype, impl) in impls
    for r in report["rows"]:
        assert r["forward_ms"] > 0
        if r["impl"] != "copy":
            assert r["forward_backward_ms"] > 0
        if r["impl"] == "fakequant":  # the 1-bit mask: numel / 8 bytes
            assert r["saved_bytes"] == (r["shape"][0] * r["shape"][1] + 7) // 8
        elif r["impl"] != "copy" and r["op"] not in ("mxfp4", "nvfp4"):  # not straight-through-detached
            assert r["saved_bytes"] > 0
    sys.path.insert(0, str(BENCH))
    import render_report

    text = render_report.llm_tables(json.loads(out.read_text()))
    assert "### per_group_int4" in text and "### nvfp4" in text
    assert text.count("| weight 256x512 |") == 2 * 4 and text.count("| activation 128x512 |") == 2 * 5
