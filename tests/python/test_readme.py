"""The README's QAT example runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker):
    text = README.read_text()
    match = re.search(re.escape(f"<!-- readme-example:{marker}") + r".*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no example marked {marker}"
    return match.group(1)


def test_readme_qat_example_runs(capsys):
    pytest.importorskip("torch.ao.quantization")
    exec(compile(readme_block("qat"), "README.md:qat", "exec"), {})
    assert "torch.int8 torch.Size([16])" in capsys.readouterr().out
