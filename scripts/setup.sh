#!/usr/bin/env bash
# Idempotent set-up: torch (the CPU wheel where there is no CUDA GPU, the installed CUDA build
# where there is one), the other dependencies, and the compiled extension. Safe to run again:
# it rebuilds only when csrc/, setup.py or the torch version changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip_install torch
    else
        pip_install torch==2.13.0   # the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
    fi
fi

# Everything else at the known-good versions of constraints.txt, installed when something is missing
# or transformers lies outside the supported window; an image's own supported set (CUDA torch 2.11,
# transformers 5.17 on the GPU image, which has no network) is kept.
"$PY" - <<'PYEOF' || pip_install triton transformers tokenizers safetensors tqdm matplotlib \
    pytest pytest-benchmark ninja pybind11 build wheel "setuptools>=64"
import importlib, sys
for name in ("triton", "transformers", "tokenizers", "safetensors", "tqdm", "matplotlib",
             "pytest", "pytest_benchmark", "ninja", "pybind11", "build", "wheel"):
    importlib.import_module(name)
import setuptools, transformers
minor = tuple(int(part) for part in transformers.__version__.split(".")[:2])
sys.exit(int(setuptools.__version__.split(".")[0]) < 64 or not (5, 17) <= minor <= (5, 24))
PYEOF

stamp_now=$( { cat setup.py csrc/* ; "$PY" -c "import torch; print(torch.__version__)"; } | sha256sum | cut -d' ' -f1)
# Rebuild when the sources changed, or when the installed specalign is another checkout's.
root=$(pwd)
installed_here() {
    (cd / && "$PY" -c "import sys, specalign._C; sys.exit(not specalign._C.__file__.startswith('$root/'))") 2>/dev/null
}
if [ "$(cat .setup-stamp 2>/dev/null)" != "$stamp_now" ] || ! installed_here; then
    echo "building specalign (C++ extension)..."
    MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
    echo "$stamp_now" > .setup-stamp
fi
