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
    assert {r["synchronised"] for r in rows} == {False, True}
    for r in rows:
        assert r["step_ms_median"] > 0 and r["activation_quantizers"] == 3
        assert r["collectives_added_per_step"] == (3 if r["synchronised"] else 0)
        assert ("added_ms" in r) == r["synchronised"]
