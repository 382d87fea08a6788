"""Plain PyTorch reference of every op: the specification the C++ and Triton kernels are held to.

Readable, not fast: it materialises every distribution. The tests compare the compiled backends to
these functions token for token, and the functions themselves to exact distributions. Nothing in
the package imports this module but ``backend="reference"``.

Randomness (shared bit for bit by all backends; the constants are in :mod:`specalign.random_streams`):
stream ``NOISE`` gives the per-token exponentials ``E_v = -log u_v`` used by every categorical draw;
stream ``ACCEPT`` (at vocab index 0) gives the acceptance uniform of each draft position.

Categorical draws without normalising (docs/math.md, "Sampling without a distribution"):
- from logits ``l``: ``argmax_v l_v - log E_v`` (Gumbel-max);
- from non-negative weights ``w``: ``argmax_v w_v / E_v`` (exponential race).
Ties go to the lowest index.
"""
from __future__ import annotations

import torch

from specalign import value_checks
from specalign.ops import shifted_target_logits
from specalign.random_streams import ACCEPT, NOISE, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1

_MASK32 = 0xFFFFFFFF


def _mulhilo32(constant: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 32x32 -> 64-bit product in int64 without overflow: split the constant into 16-bit halves.
    t_lo = x * (constant & 0xFFFF)
    t_hi = x * (constant >> 16)
    mid = t_lo + ((t_hi & 0xFFFF) << 16)
    return (t_hi >> 16) + (mid >> 32), mid & _MASK32


def philox_uint32(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: int, c3: torch.Tensor) -> torch.Tensor:
    """First output word of Philox-4x32-10, as int64 in [0, 2**32). Arguments broadcast."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c2 = torch.full_like(c1, c2)
    c0, c1, c3 = torch.broadcast_tensors(c0, c1, c3)
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
    return c0


def uniform(seed: torch.Tensor, position: torch.Tensor, vocab_index: torch.Tensor, stream: int) -> torch.Tensor:
    """float32 uniforms in (0, 1) keyed by (seed, position, vocab index, stream); arguments broadcast."""
    x = philox_uint32(seed, vocab_index, position & _MASK32, stream, (position >> 32) & _MASK32)
    return ((x >> 9) * 2 + 1).to(torch.float32) * 2.0**-24


def exponential_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``E[..., v] = -log u`` for every row of ``seeds``/``positions`` (same shape) and vocab index."""
    vocab = torch.arange(vocab_size, device=seeds.device)
    u = uniform(seeds.unsqueeze(-1), positions.unsqueeze(-1), vocab, NOISE)
    return -torch.log(u)


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    # The normaliser every backend computes: m + log(sum exp(x - m)), m = max(x).
    m = x.amax(-1, keepdim=True)
    return m + torch.log(torch.exp(x - m).sum(-1, keepdim=True))


def sample(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor):
    """Reference of :func:`specalign.ops.sample`: ``(argmax_v logits_v - log E_v, status)``."""
    logits = logits.float()
    noise = exponential_noise(seeds, positions, logits.shape[-1])
    status = _status(
        (value_checks.NEGATIVE_POSITION, positions < 0),
        (value_checks.TARGET_NOT_FINITE, _not_finite(logits).any(-1)),
        (value_checks.TARGET_EMPTY_ROW, ~(logits > -torch.inf).any(-1)),
    )
    return torch.argmax(logits - torch.log(noise), dim=-1), status


def _not_finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(x) | (x == torch.inf)


def _bad_probability(x: torch.Tensor) -> torch.Tensor:
    return ~((x >= 0) & (x < torch.inf))


def _status(*checks: tuple[int, torch.Tensor]) -> torch.Tensor:
    """The 0-dim int32 status: the OR of each flag whose condition holds somewhere (no host sync)."""
    status = torch.zeros((), dtype=torch.int32, device=checks[0][1].device)
    for flag, failed in checks:
        status = status | failed.any().int() * flag
    return status


def _in_vocab(draft_tokens: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(in range [B, K], gather index [B, K, 1]): an out-of-range draft reads entry 0 and is rejected."""
    in_range = (draft_tokens >= 0) & (draft_tokens < vocab)
    return in_range, torch.where(in_range, draft_tokens.long(), 0).unsqueeze(-1)


def sample_with_stats(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor):
    """Reference of :func:`specalign.ops.sample_with_stats`: :func:`sample`'s tokens, the statistics
    of softmax over the finite logits computed in float64, and :func:`sample`'s status."""
    tokens, status = sample(logits, seeds, positions)
    x = logits.double()
    finite = x > -torch.inf
    log_p = x - torch.logsumexp(x, -1, keepdim=True)
    entropy = -torch.where(finite, log_p.exp() * log_p, 0.0).sum(-1)
    support = finite.sum(-1)
    certainty = -torch.where(finite, log_p, 0.0).sum(-1) / support - torch.log(support.double())
    log_prob = log_p.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, log_prob.float(), entropy.float(), certainty.float(), status


def speculative_verify(draft_tokens, draft_logits, target_logits, ref_logits, seeds, positions):
    """Reference of :func:`specalign.ops.speculative_verify`: ``(tokens, num_accepted, num_emitted, status)``
    (shapes and dtypes already validated)."""
    batch, num_draft = draft_tokens.shape
    raw_target, raw_draft = target_logits.float(), draft_logits.float()
    target, draft = raw_target, raw_draft[:, :num_draft]
    has_bonus = True
    if ref_logits is not None:
        rows = raw_draft.shape[1]
        target = shifted_target_logits(raw_target[:, :rows], raw_draft, ref_logits.float())
        has_bonus = rows == num_draft + 1

    log_p = target - _logsumexp(target)  # [B, K or K+1, V]
    log_q = draft - _logsumexp(draft)  # [B, K, V]
    in_range, index = _in_vocab(draft_tokens, target.shape[-1])
    log_p_x = log_p[:, :num_draft].gather(-1, index).squeeze(-1)
    log_q_x = log_q.gather(-1, index).squeeze(-1)

    steps = torch.arange(num_draft + 1, device=seeds.device)
    step_positions = positions.unsqueeze(-1) + steps  # [B, K+1]
    u = uniform(seeds.unsqueeze(-1), step_positions[:, :num_draft], torch.zeros_like(steps[:1]), ACCEPT)
    accepted = in_range & (log_q_x > -torch.inf) & (u < torch.exp(log_p_x - log_q_x))
    num_accepted = accepted.long().cumprod(-1).sum(-1)

    # The last token of each row: from the residual at the first rejection, or the bonus after K
    # acceptances (from the target row itself, also when the residual is all zero up to rounding).
    rows = torch.arange(batch, device=seeds.device)
    last_row = num_accepted.clamp(max=target.shape[1] - 1)
    noise = exponential_noise(seeds, positions + num_accepted, target.shape[-1])
    residual = torch.clamp_min(torch.exp(log_p[rows, last_row]) - torch.exp(log_q[rows, last_row.clamp(max=num_draft - 1)]), 0.0)
    rejected = num_accepted < num_draft
    from_residual = rejected & (residual.amax(-1) > 0)
    last_token = torch.where(from_residual, torch.argmax(residual / noise, -1),
                             torch.argmax(target[rows, last_row] - torch.log(noise), -1))
    emits_last = rejected | has_bonus
    status = _verify_status(draft_tokens, raw_draft, raw_target, ref_logits, target, in_range, num_accepted, positions)
    return (*_emitted(draft_tokens, num_accepted, last_token, emits_last), status)


def _verify_status(draft_tokens, raw_draft, raw_target, ref_logits, target, in_range, num_accepted, positions):
    """The value checks over what verification reads: every draft id and position, and the rows of
    each input up to the one the last token is drawn from (docs/math.md, "Value checks")."""
    num_draft = draft_tokens.shape[1]
    reached = torch.arange(num_draft + 1, device=positions.device) <= num_accepted[:, None]  # [B, K+1]
    target_rows = reached[:, : target.shape[1]]  # the (shifted) target rows read
    draft_rows = target_rows if ref_logits is not None else reached[:, :num_draft]  # SSS reads them for the shift
    draft = raw_draft[:, : draft_rows.shape[1]]
    checks = [
        (value_checks.DRAFT_TOKEN_OUT_OF_RANGE, ~in_range),
        (value_checks.NEGATIVE_POSITION, positions < 0),
        (value_checks.DRAFT_NOT_FINITE, _not_finite(draft).any(-1) & draft_rows),
        (value_checks.TARGET_NOT_FINITE, _not_finite(raw_target[:, : target.shape[1]]).any(-1) & target_rows),
        (value_checks.DRAFT_EMPTY_ROW, ~(raw_draft[:, :num_draft] > -torch.inf).any(-1) & reached[:, :num_draft]),
        (value_checks.TARGET_EMPTY_ROW, ~(target > -torch.inf).any(-1) & target_rows),
    ]
    if ref_logits is not None:
        ref = ref_logits.float()
        checks += [(value_checks.REF_NOT_FINITE, _not_finite(ref).any(-1) & target_rows),
                   (value_checks.REF_ZERO_WHERE_DRAFT_IS_NOT, ((ref == -torch.inf) & (draft > -torch.inf)).any(-1) & target_rows)]
    return _status(*checks)


def _emitted(draft_tokens, num_accepted, last_token, emits_last):
    """``(tokens, num_accepted, num_emitted)``: the accepted drafts, then ``last_token`` where emitted."""
    batch, num_draft = draft_tokens.shape
    steps = torch.arange(num_draft + 1, device=draft_tokens.device)
    drafts = torch.cat([draft_tokens.long(), draft_tokens.new_full((batch, 1), -1).long()], dim=1)
    tokens = torch.where(steps < num_accepted[:, None], drafts, -1)
    is_last = (steps == num_accepted[:, None]) & emits_last[:, None]
    tokens = torch.where(is_last, last_token[:, None], tokens)
    return tokens, num_accepted, num_accepted + emits_last.long()


def speculative_verify_probs(draft_tokens, draft_probs, target_probs, seeds, positions):
    """Reference of :func:`specalign.ops.speculative_verify_probs`: ``(tokens, num_accepted, num_emitted,
    status)`` (shapes and dtypes already validated)."""
    batch, num_draft = draft_tokens.shape
    p = target_probs.float()
    q = draft_probs.float()[:, :num_draft]
    in_range, index = _in_vocab(draft_tokens, p.shape[-1])
    p_x = p[:, :num_draft].gather(-1, index).squeeze(-1)
    q_x = q.gather(-1, index).squeeze(-1)

    steps = torch.arange(num_draft + 1, device=seeds.device)
    step_positions = positions.unsqueeze(-1) + steps
    u = uniform(seeds.unsqueeze(-1), step_positions[:, :num_draft], torch.zeros_like(steps[:1]), ACCEPT)
    accepted = in_range & (q_x > 0) & (u < p_x / q_x)
    num_accepted = accepted.long().cumprod(-1).sum(-1)

    rows = torch.arange(batch, device=seeds.device)
    noise = exponential_noise(seeds, positions + num_accepted, p.shape[-1])
    p_last = p[rows, num_accepted]
    q_last = q[rows, num_accepted.clamp(max=num_draft - 1)]
    rejected = num_accepted < num_draft
    residual = torch.clamp_min(p_last - q_last, 0.0)
    from_residual = rejected & (residual.amax(-1) > 0)
    weights = torch.where(from_residual[:, None], residual, p_last)
    last_token = torch.argmax(weights / noise, -1)

    # Read: the gathered entries up to the first rejection, the row pair (or bonus row) raced.
    gathered = in_range & (steps[:num_draft] <= num_accepted[:, None])
    status = _status(
        (value_checks.DRAFT_TOKEN_OUT_OF_RANGE, ~in_range),
        (value_checks.NEGATIVE_POSITION, positions < 0),
        (value_checks.DRAFT_NOT_FINITE, _bad_probability(q_x) & gathered),
        (value_checks.DRAFT_NOT_FINITE, _bad_probability(q_last).any(-1) & rejected),
        (value_checks.TARGET_NOT_FINITE, _bad_probability(p_x) & gathered),
        (value_checks.TARGET_NOT_FINITE, _bad_probability(p_last).any(-1)),
        (value_checks.DRAFT_EMPTY_ROW, ~(q_last > 0).any(-1) & rejected),
        (value_checks.TARGET_EMPTY_ROW, ~(p_last > 0).any(-1)),
    )
    return (*_emitted(draft_tokens, num_accepted, last_token, torch.ones_like(from_residual)), status)


def compact_rows(tensors, keep, dims):
    """Reference of :func:`specalign.ops.compact_rows`: gather the kept rows, then copy them back."""
    for tensor, dim in zip(tensors, dims):
        kept = tensor.index_select(dim, keep)
        tensor.narrow(dim, 0, keep.numel()).copy_(kept)


def fork_rows(tensors, index, dims):
    """Reference of :func:`specalign.ops.fork_rows`: :func:`compact_rows`'s gather, which also holds
    for repeated rows (the gather reads every source before the copy writes)."""
    compact_rows(tensors, index, dims)


def compact_columns(tensors, keep_mask, dims):
    """Reference of :func:`specalign.ops.compact_columns`: right-align each row's kept positions."""
    batch, length = keep_mask.shape
    lengths = keep_mask.sum(-1)
    for tensor, dim in zip(tensors, dims):
        for b in range(batch):
            row = tensor[b]
            kept = row.index_select(dim - 1, keep_mask[b].nonzero().squeeze(-1))
            n = int(lengths[b])
            row.narrow(dim - 1, length - n, n).copy_(kept)
            row.narrow(dim - 1, 0, length - n).zero_()
    columns = torch.arange(length, device=keep_mask.device)
    attention_mask = (columns >= length - lengths.unsqueeze(-1)).long()
    return lengths, attention_mask
