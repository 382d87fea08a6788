"""Launch helpers of the Triton kernels: the device guard, vocab rows split across programs, and the
reduction of the programs' per-lane results."""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl


@triton.jit
def argmax_lanes(best, index, index_bound):
    """Reduce per-lane running maxima to (max, lowest index attaining it); ``index_bound`` > any index."""
    top = tl.max(best, axis=0)
    return top, tl.min(tl.where(best == top, index, index_bound), axis=0)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs one program at a time: fewer, longer programs are faster


def on_device(device: torch.device):
    """Launch on ``device`` even when it is not the current CUDA device (no-op for the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def split_vocab(rows: int, vocab: int, block: int, device: torch.device, num_splits: int | None = None,
                waves: int = 4) -> tuple[int, int]:
    """``(split_size, splits)``: how many programs share one vocab row, and the slice each one takes.

    By default enough programs to fill the device ``waves`` times over; slices are whole blocks.
    """
    splits = num_splits or triton.cdiv(waves * _multiprocessors(device), max(rows, 1))
    split_size = triton.cdiv(triton.cdiv(vocab, max(splits, 1)), block) * block
    return split_size, triton.cdiv(vocab, split_size)
