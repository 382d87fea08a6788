#!/usr/bin/env bash
# Set up (idempotent) and run the demo; arguments go to `specalign demo` (e.g. --quick, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh  # the environment setup.sh installed into
exec "$PY" -m specalign.cli demo "$@"
