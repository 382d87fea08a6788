"""Triton kernel of :func:`specalign.ops.sample`: Gumbel-max ``argmax_v logits_v - log E_v``.

Grid ``(B, splits)``: each program races its slice of one row and writes the slice's (max key,
index); a second one-program-per-row kernel picks the winner. With one split (large B) the first
kernel's index is the answer and the second launch is skipped. Bytes: one read of the logits. The
value checks ride along: NaN or ``+inf`` logits and negative positions are ORed into the status as
the slices see them, and a row whose best key is ``-inf`` had no logit above ``-inf``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specalign import value_checks
from specalign.triton_kernels.launch import argmax_lanes, on_device, split_vocab
from specalign.triton_kernels.random_streams import exponential

_INDEX_BOUND = tl.constexpr(2**31 - 1)
_NEGATIVE_POSITION = tl.constexpr(value_checks.NEGATIVE_POSITION)
_NOT_FINITE = tl.constexpr(value_checks.TARGET_NOT_FINITE)
_EMPTY_ROW = tl.constexpr(value_checks.TARGET_EMPTY_ROW)


@triton.jit
def _report(status_ptr, flags):
    tl.atomic_or(status_ptr, flags, mask=flags != 0)


@triton.jit
def _sample_partial_kernel(
    logits_ptr, seeds_ptr, positions_ptr, best_ptr, index_ptr, status_ptr,
    vocab, split_size, num_splits,
    BLOCK_V: tl.constexpr,
):
    # logits_ptr: [B, V] float; seeds_ptr, positions_ptr: [B] int64; best_ptr: [B, splits] float32 and
    # index_ptr: [B, splits] int64, each slice's (max key, index); status_ptr: 0-dim int32
    row = tl.program_id(0)
    split = tl.program_id(1)
    seed = tl.load(seeds_ptr + row)
    position = tl.load(positions_ptr + row)
    row_ptr = logits_ptr + row.to(tl.int64) * vocab
    start = split * split_size
    end = tl.minimum(start + split_size, vocab)

    lanes = tl.arange(0, BLOCK_V)
    # Per-lane running maxima; a lane that only sees -inf answers the slice's first index, as
    # torch.argmax does for an all -inf row.
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    index = tl.full([BLOCK_V], 0, tl.int32) + start
    not_finite = tl.zeros([BLOCK_V], tl.int32)
    for offset in range(start, end, BLOCK_V):
        vocab_index = offset + lanes
        in_slice = vocab_index < end
        logits = tl.load(row_ptr + vocab_index, mask=in_slice, other=float("-inf")).to(tl.float32)
        key = logits - tl.log(exponential(seed, position, vocab_index))
        better = key > best  # strict: the lowest index wins ties
        best = tl.where(better, key, best)
        index = tl.where(better, vocab_index, index)
        not_finite |= ((logits != logits) | (logits == float("inf"))).to(tl.int32)

    top, arg = argmax_lanes(best, index, _INDEX_BOUND)
    tl.store(best_ptr + row * num_splits + split, top)
    tl.store(index_ptr + row * num_splits + split, arg.to(tl.int64))
    flags = tl.where(tl.max(not_finite, axis=0) != 0, _NOT_FINITE, 0)
    flags |= tl.where((split == 0) & (position < 0), _NEGATIVE_POSITION, 0)
    # A key is -inf exactly where the logit is (NaN keys never win): one split decides emptiness alone.
    flags |= tl.where((num_splits == 1) & (top == float("-inf")), _EMPTY_ROW, 0)
    _report(status_ptr, flags)


@triton.jit
def _sample_reduce_kernel(best_ptr, index_ptr, out_ptr, status_ptr, num_splits, BLOCK_SPLITS: tl.constexpr):
    # best_ptr: [B, splits] float32; index_ptr: [B, splits] int64; out_ptr: [B] int64 tokens;
    # status_ptr: 0-dim int32
    row = tl.program_id(0)
    splits = tl.arange(0, BLOCK_SPLITS)
    valid = splits < num_splits
    best = tl.load(best_ptr + row * num_splits + splits, mask=valid, other=float("-inf"))
    index = tl.load(index_ptr + row * num_splits + splits, mask=valid, other=_INDEX_BOUND)
    top, arg = argmax_lanes(best, index, _INDEX_BOUND)
    tl.store(out_ptr + row, arg)
    _report(status_ptr, tl.where(top == float("-inf"), _EMPTY_ROW, 0))


def sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, *,
           block_size: int = 1024, num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B] int64 tokens, 0-dim int32 status)``. ``block_size`` (vocab entries per program step) and ``num_splits``
    (programs per row; by default enough to fill the device) tune the launch, never the result."""
    batch, vocab = logits.shape
    seeds, positions = seeds.contiguous(), positions.contiguous()
    split_size, splits = split_vocab(batch, vocab, block_size, logits.device, num_splits)
    best = torch.empty((batch, splits), dtype=torch.float32, device=logits.device)
    index = torch.empty((batch, splits), dtype=torch.int64, device=logits.device)
    status = torch.zeros((), dtype=torch.int32, device=logits.device)
    if batch == 0:
        return index.view(0), status
    with on_device(logits.device):
        _sample_partial_kernel[(batch, splits)](
            logits, seeds, positions, best, index, status, vocab, split_size, splits, BLOCK_V=block_size)
        if splits == 1:
            return index.view(batch), status
        out = torch.empty(batch, dtype=torch.int64, device=logits.device)
        _sample_reduce_kernel[(batch,)](best, index, out, status, splits, BLOCK_SPLITS=triton.next_power_of_2(splits))
    return out, status
