# Sourced by setup.sh, demo.sh and test.sh (from the checkout's root): sets PY, the Python that
# installs, builds and runs, and WHERE, what it is. In order of preference:
#   1. $PYTHON, when set;
#   2. the active virtual environment ($VIRTUAL_ENV);
#   3. the checkout's own .venv, made on first use with --system-site-packages: what the system
#      Python already has is reused, anything else installs into .venv, never into the system
#      (which Debian and Ubuntu refuse: "externally managed environment").
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    WHERE="PYTHON=$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
    PY=$VIRTUAL_ENV/bin/python
    WHERE="the active virtual environment $VIRTUAL_ENV"
else
    if [ ! -x .venv/bin/python ]; then
        echo "[setup] creating the virtual environment .venv (python3 -m venv --system-site-packages)"
        if ! python3 -m venv --system-site-packages .venv; then
            rm -rf .venv
            echo "[setup] python3 cannot make a virtual environment: install its venv module (Debian, Ubuntu:" \
                 "apt install python3-venv), or activate one of yours and run this again" >&2
            exit 1
        fi
    fi
    PY=$(pwd)/.venv/bin/python
    WHERE="the checkout's virtual environment $(pwd)/.venv"
fi
