"""Triton kernels of :func:`specalign.ops.speculative_verify` and ``speculative_verify_probs``.

Nothing the size of the vocabulary is written: acceptance needs only the drafted tokens' entries
(and, from logits, each verified row's normaliser), and the one extra token per request is an
exponential race over a single row read once more. Vocab rows are split across programs so that a
small batch still fills the GPU; every stage reduces its splits in the next one. The value checks
(:mod:`specalign.value_checks`) are a few compares per element on the way, reduced with the rest.

From logits (three launches; ``a`` = target logits, or the SSS target ``tl + (dl - rl)``):
  1. ``_normaliser_kernel``, grid ``(B*K, splits)``: partial log-sum-exp of ``a`` and of the draft
     over a vocab slice, one pass with per-lane online max/sum, and the slice's value-check flags.
     Reads the ``K`` verified rows of the target and the draft (and the reference, SSS):
     ``B*K*V*(2 or 3)`` elements.
  2. ``_race_kernel``, grid ``(B, splits)``: every program reduces the normalisers, gathers the
     ``K`` drafted entries, walks to the first rejection ``n`` (a few hundred bytes, repeated per
     split) and races its slice of row ``n``: key ``max(0, p - q) / E`` for a residual, with the
     fallback ``a - log E`` (used when ``p <= q`` everywhere, and for the bonus row). Reads one row
     of each input per request. Split 0 also gathers the flags of the rows before ``n``.
  3. ``_emit_kernel``, grid ``(B,)``: reduces the splits, writes tokens and counts, and ORs the
     request's flags into the status.
From probabilities the normalisers are not needed: stages 2 and 3 only, with key
``max(0, p - q) / E`` and fallback ``p / E``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specalign import value_checks
from specalign.triton_kernels.launch import argmax_lanes, on_device, split_vocab
from specalign.triton_kernels.random_streams import ACCEPT_STREAM, exponential, uniform

_INDEX_BOUND = tl.constexpr(2**31 - 1)

_DRAFT_TOKEN_OUT_OF_RANGE = tl.constexpr(value_checks.DRAFT_TOKEN_OUT_OF_RANGE)
_NEGATIVE_POSITION = tl.constexpr(value_checks.NEGATIVE_POSITION)
_DRAFT_NOT_FINITE = tl.constexpr(value_checks.DRAFT_NOT_FINITE)
_TARGET_NOT_FINITE = tl.constexpr(value_checks.TARGET_NOT_FINITE)
_REF_NOT_FINITE = tl.constexpr(value_checks.REF_NOT_FINITE)
_REF_ZERO = tl.constexpr(value_checks.REF_ZERO_WHERE_DRAFT_IS_NOT)
_DRAFT_EMPTY_ROW = tl.constexpr(value_checks.DRAFT_EMPTY_ROW)
_TARGET_EMPTY_ROW = tl.constexpr(value_checks.TARGET_EMPTY_ROW)
# Kernel-internal flags, reduced over a row's splits: the row has an entry above -inf (above 0 for
# probabilities). A row none of whose splits saw one is empty.
_HAS_TARGET = tl.constexpr(1 << 16)
_HAS_DRAFT = tl.constexpr(1 << 17)
_REPORTED = tl.constexpr((1 << 16) - 1)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _flag(condition, flag):
    return tl.where(condition, flag, 0)


@triton.jit
def _not_finite(x):
    return (x != x) | (x == float("inf"))


@triton.jit
def _bad_probability(x):
    return ~((x >= 0.0) & (x < float("inf")))


@triton.jit
def _emptiness(flags, has, empty):
    """``empty`` where the reduced ``flags`` lack ``has``."""
    return _flag((flags & has) == 0, empty)


@triton.jit
def _load_logits(target_row, draft_row, ref_row, vocab_index, mask, draft_mask, SHIFTED: tl.constexpr):
    """The target ``a`` (SSS: ``tl + (dl - rl)``, -inf where a draft is -inf) and draft ``d`` in fp32, and
    each lane's value-check flags."""
    t = tl.load(target_row + vocab_index, mask=mask, other=float("-inf")).to(tl.float32)
    d = tl.load(draft_row + vocab_index, mask=draft_mask, other=float("-inf")).to(tl.float32)
    a = t
    flags = _flag(_not_finite(t), _TARGET_NOT_FINITE) | _flag(_not_finite(d), _DRAFT_NOT_FINITE)
    if SHIFTED:
        r = tl.load(ref_row + vocab_index, mask=mask, other=float("-inf")).to(tl.float32)
        a = t + tl.where((d > float("-inf")) & (r > float("-inf")), d - r, float("-inf"))
        flags |= _flag(_not_finite(r), _REF_NOT_FINITE) | _flag((r == float("-inf")) & (d > float("-inf")), _REF_ZERO)
    flags |= _flag(a > float("-inf"), _HAS_TARGET) | _flag(d > float("-inf"), _HAS_DRAFT)
    return a, d, flags


@triton.jit
def _online_logsumexp(running_max, running_sum, x):
    new_max = tl.maximum(running_max, x)
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # all -inf so far: keep the sum 0, not NaN
    return new_max, running_sum * tl.exp(running_max - shift) + tl.exp(x - shift)


@triton.jit
def _merge_logsumexp(partial_max, partial_sum, axis: tl.constexpr):
    top = tl.max(partial_max, axis=axis)
    shift = tl.where(top == float("-inf"), 0.0, top)
    expanded = tl.expand_dims(shift, axis)
    return top + tl.log(tl.sum(partial_sum * tl.exp(partial_max - expanded), axis=axis))


@triton.jit
def _normaliser_kernel(
    target_ptr, draft_ptr, ref_ptr, lse_ptr, flags_ptr,
    num_draft, draft_rows, vocab, split_size, num_splits,
    SHIFTED: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # target_ptr: [B, K+1, V]; draft_ptr, ref_ptr: [B, draft_rows, V] (ref_ptr unused unless SHIFTED);
    # lse_ptr: [B*K, splits, 2] float32, each slice's log-sum-exp of (a, d); flags_ptr: [B*K, splits] int32
    verified_row = tl.program_id(0)  # b * K + j
    split = tl.program_id(1)
    b = verified_row // num_draft
    j = verified_row % num_draft
    target_row = target_ptr + (b * (num_draft + 1) + j).to(tl.int64) * vocab
    draft_row = draft_ptr + (b * draft_rows + j).to(tl.int64) * vocab
    ref_row = ref_ptr + (b * draft_rows + j).to(tl.int64) * vocab
    start = split * split_size
    end = tl.minimum(start + split_size, vocab)

    lanes = tl.arange(0, BLOCK_V)
    max_a = tl.full([BLOCK_V], float("-inf"), tl.float32)
    sum_a = tl.zeros([BLOCK_V], tl.float32)
    max_d = tl.full([BLOCK_V], float("-inf"), tl.float32)
    sum_d = tl.zeros([BLOCK_V], tl.float32)
    flags = tl.zeros([BLOCK_V], tl.int32)
    for offset in range(start, end, BLOCK_V):
        vocab_index = offset + lanes
        in_slice = vocab_index < end
        a, d, lane_flags = _load_logits(target_row, draft_row, ref_row, vocab_index, in_slice, in_slice, SHIFTED)
        max_a, sum_a = _online_logsumexp(max_a, sum_a, a)
        max_d, sum_d = _online_logsumexp(max_d, sum_d, d)
        flags |= lane_flags

    out = verified_row * num_splits + split
    tl.store(lse_ptr + out * 2, _merge_logsumexp(max_a, sum_a, 0))
    tl.store(lse_ptr + out * 2 + 1, _merge_logsumexp(max_d, sum_d, 0))
    tl.store(flags_ptr + out, tl.reduce(flags, 0, _or))


@triton.jit
def _accepted_from_probs(target_steps, draft_steps, tokens, gather, u):
    """Acceptance of each step from the gathered ``p(x)``, ``q(x)``, and each step's value-check flags;
    ``*_steps``: [BLOCK_K] row pointers; ``gather``: steps with an in-range token."""
    p_x = tl.load(target_steps + tokens, mask=gather, other=0.0).to(tl.float32)
    q_x = tl.load(draft_steps + tokens, mask=gather, other=0.0).to(tl.float32)
    flags = _flag(_bad_probability(p_x), _TARGET_NOT_FINITE) | _flag(_bad_probability(q_x), _DRAFT_NOT_FINITE)
    # IEEE division, as the reference; q = 0 (never drawn) rejects without dividing by it.
    return gather & (q_x > 0.0) & (u < tl.math.div_rn(p_x, tl.where(q_x > 0.0, q_x, 1.0))), flags


@triton.jit
def _step_normalisers(lse_ptr, flags_ptr, b, steps, is_step, num_draft, lse_splits, BLOCK_LSE_SPLITS: tl.constexpr):
    """The log-sum-exps ``(lse_a, lse_d)`` [BLOCK_K] of row ``b``'s steps, merged over the splits, and each
    step's value-check flags. ``lse_ptr``: [B*K, lse_splits, 2] float32, each split's value a (max,
    sum = 1) pair of the merge; ``flags_ptr``: [B*K, lse_splits] int32."""
    splits = tl.arange(0, BLOCK_LSE_SPLITS)[None, :]
    in_tile = is_step[:, None] & (splits < lse_splits)
    partial = (b * num_draft + steps[:, None]) * lse_splits + splits  # [BLOCK_K, BLOCK_LSE_SPLITS]
    ones = tl.where(in_tile, 1.0, 0.0)
    lse_a = _merge_logsumexp(tl.load(lse_ptr + partial * 2, mask=in_tile, other=float("-inf")), ones, 1)
    lse_d = _merge_logsumexp(tl.load(lse_ptr + partial * 2 + 1, mask=in_tile, other=float("-inf")), ones, 1)
    flags = tl.reduce(tl.load(flags_ptr + partial, mask=in_tile, other=0), 1, _or)
    flags = ((flags & _REPORTED) | _emptiness(flags, _HAS_TARGET, _TARGET_EMPTY_ROW)
             | _emptiness(flags, _HAS_DRAFT, _DRAFT_EMPTY_ROW))
    return lse_a, lse_d, flags


@triton.jit
def _accepted_from_logits(target_steps, draft_steps, ref_steps, tokens, gather, u, lse_a, lse_d,
                          SHIFTED: tl.constexpr):
    """Acceptance of each step from the gathered logits and the normalisers; ``*_steps``: [BLOCK_K] row
    pointers; ``gather``: steps with an in-range token."""
    a_x, d_x, _ = _load_logits(target_steps, draft_steps, ref_steps, tokens, gather, gather, SHIFTED)
    log_p = a_x - lse_a
    log_q = d_x - lse_d
    return gather & (log_q > float("-inf")) & (u < tl.exp(log_p - log_q))


@triton.jit
def _at_step(values, steps, n):
    """``values[n]`` of a [BLOCK_K] vector (+inf when ``n`` is past its steps)."""
    return tl.min(tl.where(steps == n, values, float("inf")), axis=0)


@triton.jit
def _race_slice(target_row, draft_row, ref_row, seed, position, start, end, draft_end, lse_a, lse_d,
                FROM_PROBS: tl.constexpr, SHIFTED: tl.constexpr, BLOCK_V: tl.constexpr):
    """Race vocab indices ``[start, end)`` of one row: the residual ``max(0, p - q) / E`` and the fallback
    (``a - log E`` from logits, ``p / E`` from probabilities), each as per-lane (best, index) [BLOCK_V],
    plus the residual's per-lane max and the slice's value-check flags. ``*_row``: pointers to one
    [V] row; the draft is read below ``draft_end`` only (0 beyond: the bonus row of probabilities)."""
    lanes = tl.arange(0, BLOCK_V)
    residual_max = tl.zeros([BLOCK_V], tl.float32)
    residual_best = tl.full([BLOCK_V], -1.0, tl.float32)  # keys are >= 0: the first index always enters
    residual_index = tl.full([BLOCK_V], 0, tl.int32)
    fallback_best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    fallback_index = tl.full([BLOCK_V], 0, tl.int32) + start  # an all -inf slice answers its first index
    flags = tl.zeros([BLOCK_V], tl.int32)
    for offset in range(start, end, BLOCK_V):
        vocab_index = offset + lanes
        in_slice = vocab_index < end
        noise = exponential(seed, position, vocab_index)
        if FROM_PROBS:
            p = tl.load(target_row + vocab_index, mask=in_slice, other=0.0).to(tl.float32)
            q = tl.load(draft_row + vocab_index, mask=vocab_index < draft_end, other=0.0).to(tl.float32)
            fallback_key = tl.where(in_slice, tl.math.div_rn(p, noise), float("-inf"))
            flags |= (_flag(_bad_probability(p), _TARGET_NOT_FINITE) | _flag(_bad_probability(q), _DRAFT_NOT_FINITE)
                      | _flag(p > 0.0, _HAS_TARGET) | _flag(q > 0.0, _HAS_DRAFT))
        else:
            a, d, lane_flags = _load_logits(target_row, draft_row, ref_row, vocab_index, in_slice,
                                            vocab_index < draft_end, SHIFTED)
            p = tl.exp(a - lse_a)
            q = tl.exp(d - lse_d)
            fallback_key = a - tl.log(noise)
            flags |= lane_flags
        residual = tl.maximum(p - q, 0.0)
        residual_key = tl.where(in_slice, tl.math.div_rn(residual, noise), -2.0)
        residual_max = tl.maximum(residual_max, residual)
        better = residual_key > residual_best  # strict: the lowest index wins ties
        residual_best = tl.where(better, residual_key, residual_best)
        residual_index = tl.where(better, vocab_index, residual_index)
        better = fallback_key > fallback_best
        fallback_best = tl.where(better, fallback_key, fallback_best)
        fallback_index = tl.where(better, vocab_index, fallback_index)
    return residual_max, residual_best, residual_index, fallback_best, fallback_index, tl.reduce(flags, 0, _or)


@triton.jit
def _race_kernel(
    draft_tokens_ptr, target_ptr, draft_ptr, ref_ptr, lse_ptr, lse_flags_ptr, seeds_ptr, positions_ptr,
    num_accepted_ptr, prefix_flags_ptr, split_floats_ptr, split_ints_ptr,
    num_draft, draft_rows, vocab, split_size, num_splits, lse_splits,
    FROM_PROBS: tl.constexpr, SHIFTED: tl.constexpr, HAS_BONUS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_LSE_SPLITS: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # draft_tokens_ptr: [B, K] int32/int64; target_ptr: [B, K+1, V]; draft_ptr, ref_ptr: [B, draft_rows, V]
    # (ref_ptr unused unless SHIFTED); lse_ptr: [B*K, lse_splits, 2] float32 and lse_flags_ptr:
    # [B*K, lse_splits] int32 from _normaliser_kernel (unused FROM_PROBS); seeds_ptr, positions_ptr,
    # num_accepted_ptr: [B] int64; prefix_flags_ptr: [B] int32, the flags of what precedes the race;
    # split_floats_ptr: [3, B, splits] float32 (residual max, residual best, fallback best);
    # split_ints_ptr: [3, B, splits] int32 (residual index, fallback index, flags)
    b = tl.program_id(0)
    split = tl.program_id(1)
    seed = tl.load(seeds_ptr + b)
    position = tl.load(positions_ptr + b)

    # Acceptance of the K drafts from gathered entries only (every split repeats it). A draft id
    # outside [0, V) is not read: it is a rejection.
    steps = tl.arange(0, BLOCK_K)
    is_step = steps < num_draft
    tokens = tl.load(draft_tokens_ptr + b * num_draft + steps, mask=is_step, other=0).to(tl.int64)
    in_vocab = (tokens >= 0) & (tokens < vocab)
    gather = is_step & in_vocab
    tokens = tl.where(in_vocab, tokens, 0)
    target_steps = target_ptr + (b * (num_draft + 1) + steps).to(tl.int64) * vocab  # [BLOCK_K] row pointers
    draft_steps = draft_ptr + (b * draft_rows + steps).to(tl.int64) * vocab
    ref_steps = ref_ptr + (b * draft_rows + steps).to(tl.int64) * vocab
    u = uniform(seed, position + steps, tl.zeros([BLOCK_K], tl.int32), ACCEPT_STREAM)
    if FROM_PROBS:
        accepted, step_flags = _accepted_from_probs(target_steps, draft_steps, tokens, gather, u)
        step_flags = tl.where(gather, step_flags, 0)
    else:
        lse_a, lse_d, step_flags = _step_normalisers(lse_ptr, lse_flags_ptr, b, steps, is_step, num_draft, lse_splits,
                                                     BLOCK_LSE_SPLITS)
        accepted = _accepted_from_logits(target_steps, draft_steps, ref_steps, tokens, gather, u, lse_a, lse_d, SHIFTED)
    n = tl.min(tl.where(is_step & ~accepted, steps, num_draft), axis=0)
    if split == 0:
        tl.store(num_accepted_ptr + b, n.to(tl.int64))
        prefix = tl.reduce(tl.where(is_step & (steps <= n), step_flags, 0)
                           | _flag(is_step & ~in_vocab, _DRAFT_TOKEN_OUT_OF_RANGE), 0, _or)
        tl.store(prefix_flags_ptr + b, prefix | _flag(position < 0, _NEGATIVE_POSITION))

    # Race over row n: the residual at a rejection, the bonus after K acceptances.
    rejected = n < num_draft
    start = split * split_size
    end = tl.minimum(start + split_size, vocab)
    end = tl.where(rejected | HAS_BONUS, end, start)  # SSS without K+1 rows: nothing to draw
    # The draft's row n exists for a rejection, and in SSS for a bonus (K+1 draft rows). (Masks are
    # built from index comparisons: the interpreter mistypes scalar-bool & vector-bool.)
    draft_end = tl.where(rejected | SHIFTED, end, start)
    lse_a_n, lse_d_n = 0.0, 0.0
    if not FROM_PROBS:
        # +inf on the bonus row makes p = q = 0 there: only the fallback races.
        lse_a_n = _at_step(lse_a, steps, n)
        lse_d_n = _at_step(lse_d, steps, n)
    row_n = (b * draft_rows + n).to(tl.int64) * vocab
    residual_max, residual_best, residual_index, fallback_best, fallback_index, flags = _race_slice(
        target_ptr + (b * (num_draft + 1) + n).to(tl.int64) * vocab, draft_ptr + row_n, ref_ptr + row_n,
        seed, position + n, start, end, draft_end, lse_a_n, lse_d_n, FROM_PROBS, SHIFTED, BLOCK_V)

    out = b * num_splits + split
    plane = tl.num_programs(0) * num_splits  # B * splits
    tl.store(split_floats_ptr + out, tl.max(residual_max, axis=0))
    top, arg = argmax_lanes(residual_best, residual_index, _INDEX_BOUND)
    tl.store(split_floats_ptr + plane + out, top)
    tl.store(split_ints_ptr + out, arg)
    top, arg = argmax_lanes(fallback_best, fallback_index, _INDEX_BOUND)
    tl.store(split_floats_ptr + 2 * plane + out, top)
    tl.store(split_ints_ptr + plane + out, arg)
    tl.store(split_ints_ptr + 2 * plane + out, flags)


@triton.jit
def _emit_kernel(
    draft_tokens_ptr, num_accepted_ptr, prefix_flags_ptr, split_floats_ptr, split_ints_ptr, tokens_ptr,
    num_emitted_ptr, status_ptr,
    num_draft, num_splits,
    HAS_BONUS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):
    # draft_tokens_ptr: [B, K] int32/int64; num_accepted_ptr, num_emitted_ptr: [B] int64; prefix_flags_ptr:
    # [B] int32; split_floats_ptr, split_ints_ptr: [3, B, splits] as _race_kernel wrote them;
    # tokens_ptr: [B, K+1] int64; status_ptr: 0-dim int32, the OR of every request's flags
    b = tl.program_id(0)
    n = tl.load(num_accepted_ptr + b)
    rejected = n < num_draft
    emits = rejected | HAS_BONUS

    splits = tl.arange(0, BLOCK_SPLITS)
    valid = splits < num_splits
    at = b * num_splits + splits
    plane = tl.num_programs(0) * num_splits
    residual_max = tl.load(split_floats_ptr + at, mask=valid, other=0.0)
    residual_best = tl.load(split_floats_ptr + plane + at, mask=valid, other=-2.0)
    fallback_best = tl.load(split_floats_ptr + 2 * plane + at, mask=valid, other=float("-inf"))
    residual_index = tl.load(split_ints_ptr + at, mask=valid, other=_INDEX_BOUND)
    fallback_index = tl.load(split_ints_ptr + plane + at, mask=valid, other=_INDEX_BOUND)
    race_flags = tl.reduce(tl.load(split_ints_ptr + 2 * plane + at, mask=valid, other=0), 0, _or)
    _, residual_token = argmax_lanes(residual_best, residual_index, _INDEX_BOUND)
    _, fallback_token = argmax_lanes(fallback_best, fallback_index, _INDEX_BOUND)
    # p <= q everywhere (up to rounding) leaves no residual: the residual is then p itself.
    token = tl.where(tl.max(residual_max, axis=0) > 0.0, residual_token, fallback_token).to(tl.int64)

    columns = tl.arange(0, BLOCK_K)
    drafts = tl.load(draft_tokens_ptr + b * num_draft + columns, mask=columns < n, other=-1).to(tl.int64)
    token_column = tl.where(emits, n, -1)
    out = tl.where(columns < n, drafts, tl.where(columns == token_column, token, -1))
    tl.store(tokens_ptr + b * (num_draft + 1) + columns, out, mask=columns <= num_draft)
    tl.store(num_emitted_ptr + b, n + emits.to(tl.int64))

    # The raced row: its flags, an empty target row, and an empty draft row at a rejection.
    status = tl.load(prefix_flags_ptr + b) | tl.where(
        emits, (race_flags & _REPORTED) | _emptiness(race_flags, _HAS_TARGET, _TARGET_EMPTY_ROW), 0)
    status |= tl.where(rejected, _emptiness(race_flags, _HAS_DRAFT, _DRAFT_EMPTY_ROW), 0)
    tl.atomic_or(status_ptr, status, mask=status != 0)


def _verify(draft_tokens, draft, target, ref, seeds, positions, from_probs, block_size, num_splits):
    draft_tokens, seeds, positions = draft_tokens.contiguous(), seeds.contiguous(), positions.contiguous()
    batch, num_draft = draft_tokens.shape
    draft_rows, vocab = draft.shape[1], draft.shape[2]
    device = draft_tokens.device
    shifted = ref is not None
    ref = ref if shifted else target  # any pointer fills the unused slot
    has_bonus = not shifted or draft_rows == num_draft + 1
    block_k = triton.next_power_of_2(num_draft + 1)
    tokens = torch.empty((batch, num_draft + 1), dtype=torch.int64, device=device)
    num_accepted = torch.empty(batch, dtype=torch.int64, device=device)
    num_emitted = torch.empty(batch, dtype=torch.int64, device=device)
    status = torch.zeros((), dtype=torch.int32, device=device)
    if batch == 0:
        return tokens, num_accepted, num_emitted, status

    with on_device(device):
        lse, lse_flags, lse_splits = target, status, 1  # probabilities need no normalisers
        if not from_probs:
            lse_size, lse_splits = split_vocab(batch * num_draft, vocab, block_size, device, num_splits)
            lse = torch.empty((batch * num_draft, lse_splits, 2), dtype=torch.float32, device=device)
            lse_flags = torch.empty((batch * num_draft, lse_splits), dtype=torch.int32, device=device)
            _normaliser_kernel[(batch * num_draft, lse_splits)](
                target, draft, ref, lse, lse_flags,
                num_draft, draft_rows, vocab, lse_size, lse_splits,
                SHIFTED=shifted, BLOCK_V=block_size)

        race_size, race_splits = split_vocab(batch, vocab, block_size, device, num_splits)
        prefix_flags = torch.empty(batch, dtype=torch.int32, device=device)
        split_floats = torch.empty((3, batch, race_splits), dtype=torch.float32, device=device)
        split_ints = torch.empty((3, batch, race_splits), dtype=torch.int32, device=device)
        _race_kernel[(batch, race_splits)](
            draft_tokens, target, draft, ref, lse, lse_flags, seeds, positions,
            num_accepted, prefix_flags, split_floats, split_ints,
            num_draft, draft_rows, vocab, race_size, race_splits, lse_splits,
            FROM_PROBS=from_probs, SHIFTED=shifted, HAS_BONUS=has_bonus,
            BLOCK_K=block_k, BLOCK_LSE_SPLITS=triton.next_power_of_2(lse_splits), BLOCK_V=block_size)
        _emit_kernel[(batch,)](
            draft_tokens, num_accepted, prefix_flags, split_floats, split_ints, tokens, num_emitted, status,
            num_draft, race_splits,
            HAS_BONUS=has_bonus, BLOCK_K=block_k, BLOCK_SPLITS=triton.next_power_of_2(race_splits))
    return tokens, num_accepted, num_emitted, status


def speculative_verify(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions, *,
                       block_size: int = 1024, num_splits: int | None = None):
    """``(tokens [B, K+1], num_accepted [B], num_emitted [B], status [])`` from logits, standard or SSS.

    ``block_size`` (vocab entries per program step) and ``num_splits`` (programs per vocab row; by
    default enough to fill the device) are launch parameters: they never change the result.
    """
    return _verify(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions,
                   False, block_size, num_splits)


def speculative_verify_probs(draft_tokens, draft_probs, target_probs, seeds, positions, *,
                             block_size: int = 1024, num_splits: int | None = None):
    """``(tokens [B, K+1], num_accepted [B], num_emitted [B], status [])`` from probabilities."""
    return _verify(draft_tokens, draft_probs, target_probs, None, seeds, positions,
                   True, block_size, num_splits)
