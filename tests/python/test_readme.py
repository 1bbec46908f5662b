"""The README's examples and the docs' marked examples run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_block(marker, path=README, kind="readme-example"):
    text = path.read_text()
    match = re.search(re.escape(f"<!-- {kind}:{marker}") + r".*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{path.name} has no example marked {marker}"
    return match.group(1)


def test_readme_qat_example_runs(capsys):
    pytest.importorskip("torch.ao.quantization")
    exec(compile(readme_block("qat"), "README.md:qat", "exec"), {})
    assert "torch.int8 torch.Size([16])" in capsys.readouterr().out


def test_readme_basics_example_runs():
    exec(compile(readme_block("basics"), "README.md:basics", "exec"), {})


def test_docs_torchao_qat_example_runs():
    pytest.importorskip("torchao.quantization.qat")
    exec(compile(readme_block("torchao-qat", ROOT / "docs" / "qat.md", "doc-example"), "docs/qat.md:torchao-qat",
                 "exec"), {})
