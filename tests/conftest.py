"""Shared set-up of the specalign tests: Triton in interpreter mode, readable test ids, fixtures.

Helpers (random inputs, the chi-square test, tiny models) are in ``helpers.py``."""
import os

# Before anything imports triton or specalign: Triton kernels then run on CPU tensors (slowly).
# TRITON_INTERPRET=0 (set by bench/gpu_run.sh for tests/test_cuda.py) keeps the compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: ``float32`` rather than ``dtype0``, ``3x3x300`` for a shape."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    if isinstance(val, tuple) and all(isinstance(v, int) for v in val):
        return "x".join(map(str, val))
    return None


@pytest.fixture(scope="module")
def one_thread():
    """For modules that decode tiny models: all per-op overhead, so a second thread only adds
    contention on a busy 2-core machine (20x slower seen). Use with ``pytestmark``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator():
    """A fresh, seeded generator per test: every test sees the same inputs on every run."""
    return torch.Generator().manual_seed(20240601)
