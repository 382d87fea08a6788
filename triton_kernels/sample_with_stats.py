"""Triton kernel of :func:`specalign.ops.sample_with_stats`: :mod:`.sample`'s Gumbel-max draw and, in
the same pass, the moments of ``softmax(logits)`` that give the token's log-probability, the entropy
and the self-certainty.

Grid ``(B, splits)``: each program reads its slice of one row once and writes the slice's (max key,
index) and, over its finite logits, their count ``n`` and the online log-sum-exp moments about
their max ``m``: ``s = sum exp(x - m)``, ``t = sum exp(x - m) (x - m)``, ``u = sum (x - m)``. The
``[B, splits]`` partials are merged with a few tensor ops (about a larger max ``m'``:
``s e^d``, ``e^d (t + s d)``, ``u + n d`` with ``d = m - m'``). Bytes: one read of the logits.
The value checks ride along as in :mod:`.sample`: NaN or ``+inf`` logits and negative positions are
ORed into the status by the slices that see them, and a row with no finite logit (a count of 0 over
its splits) is found in the merge.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from specalign import value_checks
from specalign.triton_kernels.launch import argmax_lanes, on_device, split_vocab
from specalign.triton_kernels.random_streams import exponential

_INDEX_BOUND = tl.constexpr(2**31 - 1)
_NEGATIVE_POSITION = tl.constexpr(value_checks.NEGATIVE_POSITION)
_NOT_FINITE = tl.constexpr(value_checks.TARGET_NOT_FINITE)


@triton.jit
def _rescale(max_logit, new_max, count, sum_exp, sum_exp_shifted, sum_shifted):
    """The moments ``(s, t, u)`` about ``max_logit`` re-expressed about ``new_max >= max_logit``
    (lane-wise; a lane with no finite logit yet holds zeros)."""
    had_any = max_logit > float("-inf")
    shift = tl.where(had_any, max_logit - tl.where(new_max == float("-inf"), 0.0, new_max), 0.0)
    scale = tl.where(had_any, tl.exp(shift), 0.0)
    return scale * sum_exp, scale * (sum_exp_shifted + sum_exp * shift), sum_shifted + count * shift


@triton.jit
def _sample_with_stats_partial_kernel(
    logits_ptr, seeds_ptr, positions_ptr, best_ptr, index_ptr, moments_ptr, status_ptr,
    vocab, split_size, num_splits,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    seed = tl.load(seeds_ptr + row)
    position = tl.load(positions_ptr + row)
    row_ptr = logits_ptr + row.to(tl.int64) * vocab
    start = split * split_size
    end = tl.minimum(start + split_size, vocab)

    lanes = tl.arange(0, BLOCK_V)
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    index = tl.full([BLOCK_V], 0, tl.int32) + start
    # Per-lane moments of the finite logits about the lane's max, merged across lanes at the end.
    lane_max = tl.full([BLOCK_V], float("-inf"), tl.float32)
    lane_count = tl.zeros([BLOCK_V], tl.float32)
    lane_exp = tl.zeros([BLOCK_V], tl.float32)
    lane_exp_shifted = tl.zeros([BLOCK_V], tl.float32)
    lane_shifted = tl.zeros([BLOCK_V], tl.float32)
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

        finite = logits > float("-inf")
        new_max = tl.maximum(lane_max, logits)
        lane_exp, lane_exp_shifted, lane_shifted = _rescale(lane_max, new_max, lane_count, lane_exp,
                                                            lane_exp_shifted, lane_shifted)
        lane_max = new_max
        # A lane's max is finite wherever its logit is; -inf - -inf never forms (not even unselected).
        shifted = tl.where(finite, logits - tl.where(finite, lane_max, 0.0), 0.0)
        e = tl.where(finite, tl.exp(shifted), 0.0)
        lane_count += finite.to(tl.float32)
        lane_exp += e
        lane_exp_shifted += e * shifted
        lane_shifted += shifted

    top, arg = argmax_lanes(best, index, _INDEX_BOUND)
    slot = row * num_splits + split
    tl.store(best_ptr + slot, top)
    tl.store(index_ptr + slot, arg.to(tl.int64))
    split_max = tl.max(lane_max, axis=0)
    lane_exp, lane_exp_shifted, lane_shifted = _rescale(lane_max, split_max, lane_count, lane_exp, lane_exp_shifted,
                                                        lane_shifted)
    moments = moments_ptr + slot * 5
    tl.store(moments, split_max)
    tl.store(moments + 1, tl.sum(lane_count, axis=0))
    tl.store(moments + 2, tl.sum(lane_exp, axis=0))
    tl.store(moments + 3, tl.sum(lane_exp_shifted, axis=0))
    tl.store(moments + 4, tl.sum(lane_shifted, axis=0))
    flags = tl.where(tl.max(not_finite, axis=0) != 0, _NOT_FINITE, 0)
    flags |= tl.where((split == 0) & (position < 0), _NEGATIVE_POSITION, 0)
    tl.atomic_or(status_ptr, flags, mask=flags != 0)


def _merge(logits, best, index, moments, status):
    """The token and statistics of each row from its splits' partials (float64 arithmetic), and the
    status with the empty-row flag added (tensor ops, no host sync)."""
    split_max, count, sum_exp, sum_exp_shifted, sum_shifted = moments.double().unbind(-1)
    row_max = split_max.amax(1, keepdim=True)
    present = split_max > -math.inf
    shift = torch.where(present, split_max - row_max, 0.0)
    scale = torch.where(present, shift.exp(), 0.0)
    total_exp = (scale * sum_exp).sum(1)
    total_exp_shifted = (scale * (sum_exp_shifted + sum_exp * shift)).sum(1)
    total_shifted = (sum_shifted + count * shift).sum(1)
    finite = count.sum(1)
    tokens = index.gather(1, best.argmax(1, keepdim=True)).squeeze(1)  # first split of the max: lowest index
    token_logits = logits.gather(1, tokens[:, None]).squeeze(1).double()
    log_prob = token_logits - row_max.squeeze(1) - total_exp.log()
    entropy = total_exp.log() - total_exp_shifted / total_exp
    certainty = total_exp.log() - total_shifted / finite - finite.log()
    status |= (finite == 0).any().int() * value_checks.TARGET_EMPTY_ROW
    return tokens, log_prob.float(), entropy.float(), certainty.float(), status


def sample_with_stats(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, *,
                      block_size: int = 1024, num_splits: int | None = None):
    """``(tokens [B] int64, log_prob, entropy, certainty [B] float32, 0-dim int32 status)``; ``block_size`` and
    ``num_splits`` tune the launch (as in :mod:`.sample`), never the tokens."""
    batch, vocab = logits.shape
    seeds, positions = seeds.contiguous(), positions.contiguous()
    split_size, splits = split_vocab(batch, vocab, block_size, logits.device, num_splits)
    best = torch.empty((batch, splits), dtype=torch.float32, device=logits.device)
    index = torch.empty((batch, splits), dtype=torch.int64, device=logits.device)
    moments = torch.empty((batch, splits, 5), dtype=torch.float32, device=logits.device)
    status = torch.zeros((), dtype=torch.int32, device=logits.device)
    if batch > 0:
        with on_device(logits.device):
            _sample_with_stats_partial_kernel[(batch, splits)](
                logits, seeds, positions, best, index, moments, status, vocab, split_size, splits, BLOCK_V=block_size)
    return _merge(logits, best, index, moments, status)
