"""Registration of the ``specalign`` custom ops, done once at import.

``csrc/`` defines the op schemas and the CPU kernels (loaded with ``specalign._C``); this module adds
the CUDA kernels (Triton, imported on first use) and the fake implementations that let the ops trace
under ``torch.compile``.
"""
from __future__ import annotations

import importlib
import os

import torch

from specalign import _built_torch

_built_torch.check()  # before _C loads: under another torch it would fail obscurely
from specalign import _C  # noqa: E402,F401  (defines torch.ops.specalign.* and registers the CPU kernels)

# op name -> module of specalign.triton_kernels that implements it under the same name
_TRITON_MODULES = {
    "speculative_verify": "speculative_verify",
    "speculative_verify_probs": "speculative_verify",
    "sample": "sample",
    "compact_rows": "compact_rows",
    "compact_columns": "compact_columns",
}


def triton_kernel(name: str):
    module = importlib.import_module(f"specalign.triton_kernels.{_TRITON_MODULES[name]}")
    return getattr(module, name)


def call(name: str, backend: str | None, device: torch.device, *args):
    """Run op ``name`` on ``backend`` (``None``: the dispatcher picks by device)."""
    if backend is None:
        return getattr(torch.ops.specalign, name)(*args)
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        return getattr(torch.ops.specalign, name)(*args)
    if backend == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before specalign is imported")
        return triton_kernel(name)(*args)
    raise ValueError(f"unknown backend {backend!r}")


def _register_cuda(name: str):
    def kernel(*args):
        return triton_kernel(name)(*args)

    torch.library.register_kernel(f"specalign::{name}", "cuda", kernel)


for _name in _TRITON_MODULES:
    _register_cuda(_name)


@torch.library.register_fake("specalign::speculative_verify")
def _(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions):
    batch, num_draft = draft_tokens.shape
    return (draft_tokens.new_empty((batch, num_draft + 1), dtype=torch.long),
            draft_tokens.new_empty((batch,), dtype=torch.long),
            draft_tokens.new_empty((batch,), dtype=torch.long))


@torch.library.register_fake("specalign::speculative_verify_probs")
def _(draft_tokens, draft_probs, target_probs, seeds, positions):
    batch, num_draft = draft_tokens.shape
    return (draft_tokens.new_empty((batch, num_draft + 1), dtype=torch.long),
            draft_tokens.new_empty((batch,), dtype=torch.long),
            draft_tokens.new_empty((batch,), dtype=torch.long))


@torch.library.register_fake("specalign::sample")
def _(logits, seeds, positions):
    return logits.new_empty((logits.shape[0],), dtype=torch.long)


@torch.library.register_fake("specalign::compact_rows")
def _(tensors, keep, dims):
    return None


@torch.library.register_fake("specalign::compact_columns")
def _(tensors, keep_mask, dims):
    batch, length = keep_mask.shape
    return keep_mask.new_empty((batch,), dtype=torch.long), keep_mask.new_empty((batch, length), dtype=torch.long)
