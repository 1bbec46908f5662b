#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test fakequant. Idempotent: anything
# already present is left alone, so a second run takes seconds.
#   apt: cmake, ninja, GoogleTest, Google Benchmark, a C++ compiler, Clang with libFuzzer
#        (clang, libclang-rt-dev: the fuzz target of ci/sanitize.sh)
#   pip: torch==2.13.0 (CPU build), pytest, numpy, expecttest, scikit-build-core, torchao
#        (torch.ao.quantization's successor; the QAT modules are tested against both),
#        matplotlib (bench/render_report.py draws the GB/s plots of the benchmark report),
#        scikit-learn (its bundled digits data set: the end-to-end QAT accuracy test),
#        onnx, onnxscript (torch.onnx's dynamo exporter), onnxruntime (runs the exported models:
#        tests/python/test_export*.py, docs/deploy.md)
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${FAKEQUANT_TORCH_VERSION:-2.13.0}

apt_packages=(cmake ninja-build libgtest-dev libbenchmark-dev g++ make clang libclang-rt-dev)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci/setup.sh: apt-get install ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pip_install() { "$PYTHON" -m pip install -q --disable-pip-version-check "$@"; }

have_torch=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ -z "$have_torch" ]; then
  echo "ci/setup.sh: pip install torch==$TORCH_VERSION"
  pip_install "torch==$TORCH_VERSION"
elif [ "$have_torch" != "$TORCH_VERSION" ]; then
  echo "ci/setup.sh: using the installed torch $have_torch (expected $TORCH_VERSION)"
fi

py_missing=()
for mod in pytest numpy expecttest scikit_build_core torchao matplotlib sklearn onnx onnxscript onnxruntime; do
  "$PYTHON" -c "import $mod" 2>/dev/null || py_missing+=("$mod")
done
if [ ${#py_missing[@]} -gt 0 ]; then
  pkgs=()
  for m in "${py_missing[@]}"; do
    case "$m" in
      sklearn) pkgs+=(scikit-learn) ;;
      *) pkgs+=("${m//_/-}") ;;
    esac
  done
  echo "ci/setup.sh: pip install ${pkgs[*]}"
  # torch stays pinned: nothing here may pull another build of it.
  pip_install "${pkgs[@]}" "torch==$("$PYTHON" -c "import torch; print(torch.__version__)")"
fi

echo "ci/setup.sh: ready ($("$PYTHON" -c "import torch; print('torch', torch.__version__)"), $(cmake --version | head -1))"
