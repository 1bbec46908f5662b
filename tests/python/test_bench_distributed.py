"""The synchronisation-cost benchmark runs (--quick) and writes its JSON, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_distributed.py"


def test_bench_distributed_quick(tmp_path):
    out = tmp_path / "distributed.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], check=True, timeout=300, env=env)
    report = json.loads(out.read_text())
    assert report["context"]["backend"] == "gloo" and report["context"]["world"] == 2
    rows = report["rows"]
    assert {(r["model"], r["synchronised"], r["bn_synchronised"], r["bucketed"]) for r in rows} == {
        ("mlp", False, False, False), ("mlp", True, False, False), ("mlp", True, False, True),
        ("cnn", False, False, False), ("cnn", True, False, False), ("cnn", True, True, False)}
    for r in rows:
        # the MLP: the inputs of 2 linear layers and the head; the CNN: of 2 ConvBnReLU2d (8
        # channels), the pooling and the head
        quantizers = 3 if r["model"] == "mlp" else 4
        assert r["step_ms_median"] > 0 and r["activation_quantizers"] == quantizers
        assert r["conv_bn_modules"] == (2 if r["model"] == "cnn" else 0)
        if r["bucketed"]:  # one all_reduce of 3 float64 (scale, state, accum) per quantizer
            assert r["collectives_added_per_step"] == 1 and r["bytes_added_per_step"] == 24 * quantizers
            continue
        assert r["collectives_added_per_step"] == quantizers * r["synchronised"] + 4 * r["bn_synchronised"]
        assert r["bytes_added_per_step"] == 8 * quantizers * r["synchronised"] + 8 * (4 * 16 + 2) * r["bn_synchronised"]
        assert ("added_ms" in r) == r["synchronised"]
