#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on the CPU: C++ kernels, Triton kernels under
# the interpreter, the reference, and the generate integrations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q tests "$@"
