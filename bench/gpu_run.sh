#!/usr/bin/env bash
# One GPU lease, one command: set up, test on CUDA, time every op, run the end-to-end measures.
#
#     bash bench/gpu_run.sh OUT_DIR              # on the GPU machine (no network needed)
#     bash bench/gpu_run.sh OUT_DIR --dry-run    # on a CPU machine: CUDA parts skip, the rest runs tiny
#
# The stages, their estimated time on one H200 and their hard limits, are in bench/gpu_run.py's
# header; each runs in its own process, so one that fails or times out loses nothing of the others.
# OUT_DIR receives at most four files: gpu_run.log (everything printed), <device>.json and
# <device>.md (the results, rewritten after every measurement) and cuda_tests.xml (JUnit).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_run.sh OUT_DIR [--dry-run] [--deadline-s SECONDS]" >&2
    exit 2
fi
out=$1
shift
mkdir -p "$out"
export PYTHON=${PYTHON:-python3}
# No registry is reachable on the GPU machine: any install attempt must fail at once, not retry.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PYTHON" bench/gpu_run.py drive --out "$out" "$@" 2>&1 | tee "$out/gpu_run.log"
