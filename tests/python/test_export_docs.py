"""docs/deploy.md's marked examples run as written (the pattern of test_readme.py)."""

import pathlib

import pytest

from test_readme import readme_block

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


@pytest.mark.parametrize("marker", ["onnx", "torchscript", "torch-export"])
def test_deploy_example_runs(marker):
    if marker == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    code = readme_block(marker, DEPLOY, "doc-example")
    exec(compile(code, f"docs/deploy.md:{marker}", "exec"), {})
