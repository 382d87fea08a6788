#!/usr/bin/env bash
# The model-integration tests on the oldest supported transformers (constraints-oldest.txt): a second
# environment made of the first one's packages (torch, the built extension, the rest) with
# transformers and its hub client of that release installed into .oldest-site and put first on
# PYTHONPATH, so it works from whichever environment scripts/setup.sh set up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/python.sh  # the environment setup.sh installed into
SITE=.oldest-site
if ! PYTHONPATH=$SITE "$PY" -c "import transformers, sys; sys.exit(transformers.__version__ != '5.17.0')" 2>/dev/null; then
    echo "installing transformers 5.17 into $SITE..."
    rm -rf "$SITE"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$SITE" -c constraints-oldest.txt \
        transformers huggingface_hub httpx httpcore
fi
PYTHONPATH=$SITE "$PY" -c "import transformers; print('transformers', transformers.__version__)"
PYTHONPATH=$SITE exec "$PY" -m pytest -q tests/test_speculative_sampling.py tests/test_memory_and_inputs.py \
    tests/test_reward_shifted.py tests/test_speculative_rejection.py tests/test_reward_model.py \
    tests/test_architectures.py "$@"
