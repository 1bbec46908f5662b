"""The LLM QAT example (fakequant.examples.char_lm) runs end to end in its --quick form, writes
its JSON, and its numbers say what the example is for: the float model learns, 4-bit PTQ costs
perplexity, and QAT wins some of it back."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from fakequant.examples import char_lm


def test_char_lm_quick(tmp_path):
    # A child process: the example sets torch's thread count and deterministic mode for itself.
    # One thread: on a loaded 2-core machine two threads wait on each other (several times slower).
    out = tmp_path / "char_lm.json"
    printed = subprocess.run([sys.executable, "-m", "fakequant.examples.char_lm", "--quick", "--threads", "1",
                              "--out", str(out)], check=True, timeout=300, capture_output=True, text=True).stdout
    result = json.loads(out.read_text())
    for name in ("8da4w", "mxfp4", "nvfp4"):
        assert name in printed

    context = result["context"]
    for key in ("torch_version", "python_version", "threads", "date", "seed", "config", "total_s"):
        assert key in context
    assert context["quick"] and context["threads"] == 1
    data = result["data"]
    assert [f for f, _ in data["train_files"]] == [f"{m}.py" for m in char_lm.QUICK_TRAIN_MODULES]
    assert data["train_chars"] == sum(n for _, n in data["train_files"]) > 10_000
    assert not {f for f, _ in data["train_files"]} & {f for f, _ in data["val_files"]}
    assert result["model_parameters"] > 0 and result["float_train_s"] > 0

    # The float model learns: well below a uniform guess over the vocabulary.
    assert result["ppl_float"] < 0.5 * char_lm.VOCAB_SIZE
    assert math.log(result["ppl_float"]) < math.log(char_lm.VOCAB_SIZE) - 1.0
    assert set(result["formats"]) == set(char_lm.FORMATS) == {"8da4w", "mxfp4", "nvfp4"}
    for name, r in result["formats"].items():
        for key in ("ppl_ptq", "ppl_ptq_ft", "ppl_qat"):
            assert math.isfinite(r[key]) and r[key] > 1, (name, key, r[key])
        if name == "8da4w":
            # 8-bit activations and int4 weights in groups of 32 barely move a barely trained
            # tiny model (its weights are still near their uniform initialisation): either way.
            assert abs(r["ppl_ptq"] / result["ppl_float"] - 1) < 0.05, r
        else:
            # 4-bit activations and weights cost perplexity.
            assert r["ppl_ptq"] > result["ppl_float"], (name, r)
            gap = r["ppl_ptq"] - result["ppl_float"]
            assert r["recovered"] == pytest.approx((r["ppl_ptq"] - r["ppl_qat"]) / gap)
        # Fine-tuning with the fake quantizers on wins perplexity back.
        assert r["ppl_qat"] < r["ppl_ptq"], (name, r)
        assert r["meets_required"] in (True, False, None) and r["meets_budget_matched"] in (True, False, None)
        assert r["qat_train_s"] > 0 and r["ptq_eval_s"] > 0


def test_char_lm_quantizes_only_the_block_linears():
    model = char_lm.CharLM(d_model=64, n_layer=1, context=16)
    quantized = [n for n, m in model.named_modules() if isinstance(m, char_lm.QLinear)]
    assert quantized == ["blocks.0.qkv", "blocks.0.proj", "blocks.0.fc1", "blocks.0.fc2"]
    assert not isinstance(model.head, char_lm.QLinear)
    x = char_lm.encode("def f(x):\n    return x\n")[:16].unsqueeze(0)
    char_lm.set_format(model, "nvfp4")
    y = model(x)
    y.sum().backward()  # the fake quantizers pass gradients through
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in model.modules()
               if isinstance(m, char_lm.QLinear))
    char_lm.set_format(model, None)
    assert (model(x) - y).abs().max() > 0  # the format changed the output
