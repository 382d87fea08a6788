#!/usr/bin/env bash
# Idempotent set-up, one line per step:
#   bash scripts/setup.sh          torch, the other dependencies and the compiled extension
#   bash scripts/setup.sh --test   also pytest, pytest-benchmark and Triton (whose interpreter runs
#                                  the Triton kernel tests on CPU)
# torch: the installed one is kept; otherwise PyTorch's CPU wheel where there is no CUDA GPU (from
# PyTorch's CPU wheel index, or the configured package index when that index cannot be reached),
# the package index's CUDA build where there is one. Everything else at the known-good versions of
# constraints.txt, installed only when missing or outside the supported window. The extension is
# rebuilt only when csrc/, setup.py or the torch version changed. The Python environment it installs
# into is chosen by scripts/python.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[setup] $*"; }

with_tests=0
case "${1:-}" in
    --test) with_tests=1 ;;
    "") ;;
    *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
esac
source scripts/python.sh
say "python: $WHERE"

# Runs a pip command, printing one line per download, per compiled file and per install; pip's
# whole log only when it fails.
pip_quietly() {
    local log status line source_file
    log=$(mktemp)
    set +e
    "$PY" -m pip --disable-pip-version-check "$@" 2>&1 | tee "$log" | while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}  # pip indents the build's output
        case $line in
            *"Downloading "*) say "  downloading ${line#*Downloading }" ;;
            "Successfully installed "*) say "  installed ${line#Successfully installed }" ;;
            "["[0-9]*/[0-9]*"] "*" -c "*)  # ninja: [3/8] c++ ... -c /path/csrc/sample.cpp -o ...
                source_file=${line##* -c }
                say "  ${line%% *} compiling $(basename "${source_file%% *}")" ;;
            *" -shared "*) say "  linking" ;;
        esac
    done
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" = 0 ] || cat "$log" >&2
    rm -f "$log"
    return "$status"
}
pip_install() { pip_quietly install --progress-bar off -c constraints.txt "$@"; }

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
reachable() {
    "$PY" -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='HEAD'), timeout=10)" "$1" \
        >/dev/null 2>&1
}

TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
torch_pin=$(sed -n 's/^torch==//p' constraints.txt)
if "$PY" -c "import torch" 2>/dev/null; then
    say "torch $("$PY" -c 'import torch; print(torch.__version__)') (already installed)"
elif has_cuda_gpu || [ "$(uname -s)" != Linux ]; then
    # The package index's torch: the CUDA build on a Linux machine with a GPU, the CPU one elsewhere.
    say "installing torch $torch_pin"
    pip_install "torch==$torch_pin"
else
    # On Linux the package index's torch is the CUDA build (several GB of nvidia-* packages).
    if reachable "$TORCH_CPU_INDEX/torch/" && {
        say "installing torch $torch_pin+cpu from PyTorch's CPU wheel index"
        pip_install --extra-index-url "$TORCH_CPU_INDEX" "torch==$torch_pin+cpu"
    }; then :; else
        say "PyTorch's CPU wheel index is not usable here: installing torch $torch_pin from the configured" \
            "package index (where pip is configured with a CPU wheel, as on CI, that is the one taken)"
        pip_install "torch==$torch_pin"
    fi
fi

with_triton=$with_tests
if has_cuda_gpu; then with_triton=1; fi
# Prints the pip requirements that are missing or outside the supported window (run from / so
# that the checkout's folders, build/ among them, never pass for modules).
missing=$(cd / && "$PY" - "$with_tests" "$with_triton" <<'PYEOF'
import importlib.metadata, importlib.util, re, sys

with_tests, with_triton = (flag == "1" for flag in sys.argv[1:])
modules = {"transformers": "transformers", "tokenizers": "tokenizers", "safetensors": "safetensors",
           "tqdm": "tqdm", "matplotlib": "matplotlib", "ninja": "ninja", "pybind11": "pybind11",
           "build": "build", "wheel": "wheel"}
if with_tests:
    modules.update(pytest="pytest", pytest_benchmark="pytest-benchmark")
if with_triton:
    modules["triton"] = "triton"
missing = [requirement for module, requirement in modules.items() if importlib.util.find_spec(module) is None]


def release(name):
    try:
        return tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version(name))[:2])
    except importlib.metadata.PackageNotFoundError:
        return None


transformers = release("transformers")
if transformers is not None and not (5, 17) <= transformers <= (5, 24):
    missing.append("transformers")
if (release("setuptools") or (0,)) < (64,):
    missing.append("setuptools>=64")
print(" ".join(missing))
PYEOF
)
if [ -n "$missing" ]; then
    say "installing $missing"
    # shellcheck disable=SC2086  # one word per requirement
    pip_install $missing
else
    say "dependencies present"
fi

stamp_now=$( { cat setup.py csrc/* ; "$PY" -c "import torch; print(torch.__version__)"; } | sha256sum | cut -d' ' -f1)
# Rebuild when the sources changed, or when the installed specalign is another checkout's.
root=$(pwd)
installed_here() {
    (cd / && "$PY" -c "import sys, specalign._C; sys.exit(not specalign._C.__file__.startswith('$root/'))") 2>/dev/null
}
if [ "$(cat .setup-stamp 2>/dev/null)" != "$stamp_now" ] || ! installed_here; then
    say "building the C++ extension against torch $("$PY" -c 'import torch; print(torch.__version__)')" \
        "(about 7 CPU-minutes: 3 to 4 minutes on 2 idle cores, longer on a busy machine)"
    started=$SECONDS
    MAX_JOBS=${MAX_JOBS:-2} pip_quietly install -v --no-build-isolation --no-deps -e .
    echo "$stamp_now" > .setup-stamp
    say "built in $((SECONDS - started)) s"
else
    say "the C++ extension is up to date"
fi
say "ready"
