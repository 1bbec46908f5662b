"""docs/distributed.md's multi-process examples run as written: saved as a script and run in a
fresh interpreter (torch.multiprocessing's spawn re-imports the script's __main__ module, which
an exec'd string is not)."""

import os
import pathlib
import subprocess
import sys

import pytest
from test_readme import readme_block

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


@pytest.mark.parametrize("name", ["ddp", "sync-bn", "fsdp2"])
def test_example_runs(tmp_path, name):
    script = tmp_path / f"{name.replace('-', '_')}_example.py"
    script.write_text(readme_block(name, DOC, "doc-example"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-6000:])
    assert done.stdout.strip().endswith("ok"), done.stdout
