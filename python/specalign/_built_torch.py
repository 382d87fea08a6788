"""The torch that ``specalign._C`` was compiled against, checked before the extension loads.

The extension links against one torch's C++ library. Under another torch release it fails to load
with an undefined-symbol error, or loads and misbehaves, so importing specalign stops first with
what to do. setup.py records the build's torch in ``specalign/_build_info.py``.
"""
from __future__ import annotations

import torch


def release(version: str) -> str:
    """``"2.13.0+cpu"`` -> ``"2.13.0"``: the CPU and CUDA builds of one release share the C++ API
    the extension uses, so only the release has to match."""
    return version.split("+")[0]


def mismatch(built: str, installed: str) -> str | None:
    """The error message when an extension built against torch ``built`` is imported under ``installed``."""
    if release(built) == release(installed):
        return None
    return (
        f"specalign's compiled extension was built against torch {built}, but torch {installed} is installed. "
        f"Rebuild specalign against the installed torch (`bash scripts/setup.sh` in the source checkout, or "
        f"`pip install --no-build-isolation --force-reinstall --no-deps <checkout or sdist>`), "
        f"or install torch=={release(built)}."
    )


def check() -> None:
    try:
        from specalign._build_info import TORCH_VERSION
    except ImportError:
        raise ImportError(
            "specalign's compiled extension has not been built here (specalign/_build_info.py is missing): "
            "run `bash scripts/setup.sh`, or `pip install --no-build-isolation -e .` in the checkout"
        ) from None
    message = mismatch(TORCH_VERSION, torch.__version__)
    if message:
        raise ImportError(message)
