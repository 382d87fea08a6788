#!/usr/bin/env bash
# Set up (idempotent, with the test dependencies) and run the whole test suite on the CPU: C++
# kernels, Triton kernels under the interpreter, the reference, the generate integrations and the
# command line. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/python.sh  # the environment setup.sh installed into
exec "$PY" -m pytest -q tests "$@"
