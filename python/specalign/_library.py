"""Dispatch of the ``specalign`` ops: every backend decision is made in :func:`call`.

``csrc/registration.cpp`` defines the op schemas and registers the CPU kernels (loaded with
``specalign._C``). Below, one block per op registers its CUDA kernel (Triton, imported on first use)
and its fake implementation for ``torch.compile``, and names its reference (imported on first use:
nothing but ``backend="reference"`` loads :mod:`specalign.reference`).
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch

from specalign import _built_torch

_built_torch.check()  # before _C loads: under another torch it would fail obscurely
from specalign import _C  # noqa: E402,F401  (defines torch.ops.specalign.* and registers the CPU kernels)


class _Backends(NamedTuple):
    triton: Callable
    reference: Callable


_OPS: dict[str, _Backends] = {}


def call(name: str, backend: str | None, device: torch.device, *args):
    """Run op ``name`` on ``backend``: ``None`` lets torch's dispatcher pick the kernel by device."""
    if backend is None:
        return getattr(torch.ops.specalign, name)(*args)
    if backend == "reference":
        return _OPS[name].reference(*args)
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        return getattr(torch.ops.specalign, name)(*args)
    if backend == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before specalign is imported")
        return _OPS[name].triton(*args)
    raise ValueError(f"unknown backend {backend!r}")


def _register(name: str, triton: Callable, reference: Callable, fake: Callable) -> None:
    torch.library.register_kernel(f"specalign::{name}", "cuda", triton)
    torch.library.register_fake(f"specalign::{name}", fake)
    _OPS[name] = _Backends(triton, reference)


# --- speculative_verify ----------------------------------------------------------------------------
def _speculative_verify_triton(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions):
    from specalign.triton_kernels.speculative_verify import speculative_verify

    return speculative_verify(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions)


def _speculative_verify_reference(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions):
    from specalign.reference import speculative_verify

    return speculative_verify(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions)


def _speculative_verify_fake(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions):
    return _verify_outputs_like(draft_tokens)


_register("speculative_verify", _speculative_verify_triton, _speculative_verify_reference, _speculative_verify_fake)


# --- speculative_verify_probs ----------------------------------------------------------------------
def _speculative_verify_probs_triton(draft_tokens, draft_probs, target_probs, seeds, positions):
    from specalign.triton_kernels.speculative_verify import speculative_verify_probs

    return speculative_verify_probs(draft_tokens, draft_probs, target_probs, seeds, positions)


def _speculative_verify_probs_reference(draft_tokens, draft_probs, target_probs, seeds, positions):
    from specalign.reference import speculative_verify_probs

    return speculative_verify_probs(draft_tokens, draft_probs, target_probs, seeds, positions)


def _speculative_verify_probs_fake(draft_tokens, draft_probs, target_probs, seeds, positions):
    return _verify_outputs_like(draft_tokens)


_register("speculative_verify_probs", _speculative_verify_probs_triton, _speculative_verify_probs_reference,
          _speculative_verify_probs_fake)


def _verify_outputs_like(draft_tokens):
    batch, num_draft = draft_tokens.shape
    return (draft_tokens.new_empty((batch, num_draft + 1), dtype=torch.long),
            draft_tokens.new_empty((batch,), dtype=torch.long),
            draft_tokens.new_empty((batch,), dtype=torch.long),
            draft_tokens.new_empty((), dtype=torch.int32))


# --- sample ----------------------------------------------------------------------------------------
def _sample_triton(logits, seeds, positions):
    from specalign.triton_kernels.sample import sample

    return sample(logits, seeds, positions)


def _sample_reference(logits, seeds, positions):
    from specalign.reference import sample

    return sample(logits, seeds, positions)


def _sample_fake(logits, seeds, positions):
    return logits.new_empty((logits.shape[0],), dtype=torch.long), logits.new_empty((), dtype=torch.int32)


_register("sample", _sample_triton, _sample_reference, _sample_fake)


# --- sample_with_stats -----------------------------------------------------------------------------
def _sample_with_stats_triton(logits, seeds, positions):
    from specalign.triton_kernels.sample_with_stats import sample_with_stats

    return sample_with_stats(logits, seeds, positions)


def _sample_with_stats_reference(logits, seeds, positions):
    from specalign.reference import sample_with_stats

    return sample_with_stats(logits, seeds, positions)


def _sample_with_stats_fake(logits, seeds, positions):
    batch = logits.shape[0]
    return (logits.new_empty((batch,), dtype=torch.long),
            *(logits.new_empty((batch,), dtype=torch.float32) for _ in range(3)),
            logits.new_empty((), dtype=torch.int32))


_register("sample_with_stats", _sample_with_stats_triton, _sample_with_stats_reference, _sample_with_stats_fake)


# --- compact_rows ----------------------------------------------------------------------------------
def _compact_rows_triton(tensors, keep, dims):
    from specalign.triton_kernels.compact_rows import compact_rows

    return compact_rows(tensors, keep, dims)


def _compact_rows_reference(tensors, keep, dims):
    from specalign.reference import compact_rows

    return compact_rows(tensors, keep, dims)


def _compact_rows_fake(tensors, keep, dims):
    return None


_register("compact_rows", _compact_rows_triton, _compact_rows_reference, _compact_rows_fake)


# --- fork_rows -------------------------------------------------------------------------------------
def _fork_rows_triton(tensors, index, dims):
    from specalign.triton_kernels.fork_rows import fork_rows

    return fork_rows(tensors, index, dims)


def _fork_rows_reference(tensors, index, dims):
    from specalign.reference import fork_rows

    return fork_rows(tensors, index, dims)


def _fork_rows_fake(tensors, index, dims):
    return None


_register("fork_rows", _fork_rows_triton, _fork_rows_reference, _fork_rows_fake)


# --- compact_columns -------------------------------------------------------------------------------
def _compact_columns_triton(tensors, keep_mask, dims):
    from specalign.triton_kernels.compact_columns import compact_columns

    return compact_columns(tensors, keep_mask, dims)


def _compact_columns_reference(tensors, keep_mask, dims):
    from specalign.reference import compact_columns

    return compact_columns(tensors, keep_mask, dims)


def _compact_columns_fake(tensors, keep_mask, dims):
    batch, length = keep_mask.shape
    return keep_mask.new_empty((batch,), dtype=torch.long), keep_mask.new_empty((batch, length), dtype=torch.long)


_register("compact_columns", _compact_columns_triton, _compact_columns_reference, _compact_columns_fake)
