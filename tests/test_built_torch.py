"""The extension declares the torch it was compiled against and refuses to load under another one."""
import importlib.metadata
import re
import subprocess
import sys

import pytest
import torch

from specalign import _built_torch
from specalign._build_info import TORCH_VERSION


def test_same_release_of_another_build_passes():
    assert _built_torch.mismatch("2.13.0+cpu", "2.13.0") is None
    assert _built_torch.mismatch("2.13.0", "2.13.0+cu128") is None


def test_another_release_is_named_with_the_fix():
    message = _built_torch.mismatch("2.13.0+cpu", "2.11.0+cu128")
    assert "built against torch 2.13.0+cpu" in message and "torch 2.11.0+cu128 is installed" in message
    assert "scripts/setup.sh" in message and "torch==2.13.0" in message


def test_the_build_recorded_the_installed_torch():
    assert _built_torch.release(TORCH_VERSION) == _built_torch.release(torch.__version__)


def test_check_refuses_another_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.0.0")
    with pytest.raises(ImportError, match=f"built against torch {re.escape(TORCH_VERSION)}, but torch 1.0.0"):
        _built_torch.check()


@pytest.mark.slow
def test_import_under_another_torch_fails_with_the_message():
    """End to end: the check runs before specalign._C loads."""
    code = "import torch; torch.__version__ = '1.0.0'; import specalign"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"built against torch {TORCH_VERSION}, but torch 1.0.0 is installed" in result.stderr


def test_the_package_requires_its_torch_release_and_triton_only_as_an_extra():
    requirements = importlib.metadata.requires("specalign")
    assert f"torch=={_built_torch.release(TORCH_VERSION)}" in requirements
    triton = [r for r in requirements if r.startswith("triton")]
    assert triton and all("extra ==" in r for r in triton), triton
