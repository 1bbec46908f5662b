"""Runnable examples of fakequant's ops in training (``python -m fakequant.examples.<name>``).

``char_lm``: a character-level transformer trained on CPython's own source text, comparing
float32, post-training fake quantization and quantization-aware training for the 8da4w, MXFP4
and NVFP4 formats (docs/llm-qat.md).
"""
