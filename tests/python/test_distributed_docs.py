"""docs/distributed.md's multi-process example runs as written: saved as a script and run in a
fresh interpreter (torch.multiprocessing's spawn re-imports the script's __main__ module, which
an exec'd string is not)."""

import os
import pathlib
import subprocess
import sys

from test_readme import readme_block

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def test_ddp_example_runs(tmp_path):
    script = tmp_path / "ddp_example.py"
    script.write_text(readme_block("ddp", DOC, "doc-example"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok"), done.stdout
