"""The op contract: public wrappers, argument checks and the math they share.

Each op is a ``torch.library`` custom op in the ``specalign`` namespace (``torch.ops.specalign.*``)
with a C++ kernel for CPU tensors, a Triton kernel for CUDA tensors and a fake implementation for
``torch.compile``; ``backend=None`` lets the dispatcher pick by device. ``backend`` may force
``"reference"`` (plain PyTorch, the specification), ``"cpp"`` (CPU tensors) or ``"triton"`` (CUDA
tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before import). The math is in
docs/math.md.

All randomness is keyed by ``(seeds[b], positions[b] + j, vocab index)`` (see
:mod:`specalign.random_streams`), so every backend gives the same tokens for the same seeds, and a
row's tokens never depend on the other rows of the batch.

Arguments are checked here, once, for every backend: types, shapes, dtypes and devices always. The
values of the sampling ops' inputs (NaN or ``+inf``, empty rows, draft ids out of range, negative
positions) are checked by the kernels in their own pass over the inputs and reported in a status
that the wrapper reads once when ``check_values=True`` (:mod:`specalign.value_checks`). The
compaction ops check their indices here (one host read).

The pieces of one op (a checklist for the next one):

1. its schema in ``csrc/registration.cpp`` and its C++ kernel in ``csrc/<op>.cpp`` (declared in
   ``csrc/ops.h``);
2. its Triton kernel in ``triton_kernels/<op>.py``;
3. its specification in ``reference.py``;
4. one block in ``_library.py``: the lazily imported Triton kernel and reference, and the fake;
5. its wrapper here: documented shapes, dtypes and an example (run as a doctest), argument checks;
6. ``tests/test_<op>.py`` (backends token for token, exactness where it samples), bad input in
   ``tests/test_bad_input.py``;
7. ``bench/bench_<op>.py`` with its minimum bytes, and its figures in ``bench/NOTES.md``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from specalign import _library, value_checks
from specalign.value_checks import raise_for_status

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = (None, "reference", "cpp", "triton")


class VerifyOutput(NamedTuple):
    """Result of :func:`speculative_verify`.

    tokens: ``[B, K+1]`` int64, the emitted tokens of each row, padded with -1.
    num_accepted: ``[B]`` int64, draft tokens accepted (a prefix of ``draft_tokens``).
    num_emitted: ``[B]`` int64, tokens written to ``tokens``: the accepted drafts plus one residual
    or bonus token (no bonus in SSS mode when the drafts' ``K+1``-th rows are not given).
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    num_emitted: torch.Tensor


def shifted_target_logits(target: torch.Tensor, draft: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The SSS target's logits ``target + (draft - ref)``: their softmax is ``norm(pi_ref * pi_r / pi_d)``.

    ``target`` are the target's processed logits (``pi_ref``), ``draft`` the aligned draft's
    (``pi_r``), ``ref`` the unaligned draft's (``pi_d``); the normaliser ``Z`` stays implicit. A token
    that either draft gives zero probability (``-inf``) gets zero weight: ``-inf - -inf`` is never
    formed. The shift is exactly 0 where ``draft == ref`` and both are finite, so SSS then repeats
    standard mode bit for bit on those tokens. Shapes broadcast; the result has ``target``'s dtype
    promoted with the drafts'.

    Example::

        >>> t, d, r = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -torch.inf, 0.5]), torch.tensor([1.0, -torch.inf, 0.0])
        >>> shifted_target_logits(t, d, r)
        tensor([0.0000,   -inf, 2.5000])
    """
    finite = (draft > -torch.inf) & (ref > -torch.inf)
    shift = torch.where(finite, draft - ref, torch.full_like(draft, -torch.inf))
    return target + shift


def speculative_verify(
    draft_tokens: torch.Tensor,
    draft_logits: torch.Tensor,
    target_logits: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    backend: str | None = None,
    check_values: bool = True,
) -> VerifyOutput:
    """Verify ``K`` drafted tokens per row and emit the accepted prefix plus one more token.

    Standard mode (``ref_logits=None``; docs/math.md, "Speculative sampling"): accept draft ``x_j`` with probability
    ``min(1, p_j(x_j) / q_j(x_j))``, with ``p = softmax(target_logits)``, ``q = softmax(draft_logits)``;
    at the first rejection emit a token from ``norm(max(0, p_j - q_j))``; after ``K`` acceptances emit
    a bonus token from ``p_K``. The output follows ``p`` exactly.

    SSS mode (``ref_logits`` given; docs/math.md, "Exact reward-shifted speculative sampling"):
    ``draft_logits`` are the aligned draft's (``pi_r``, which proposed the tokens), ``ref_logits`` the
    unaligned draft's (``pi_d``), and the tokens follow ``t = norm(pi_ref * pi_r / pi_d)`` exactly: the
    same rule with target logits ``target_logits + draft_logits - ref_logits``. A bonus token is drawn from ``t`` at ``K`` only
    when ``draft_logits`` and ``ref_logits`` have ``K+1`` rows. With ``ref_logits == draft_logits``
    the tokens equal standard mode's where the draft logits are finite: a token whose draft logit is
    ``-inf`` gets zero weight in the shifted target (``-inf - -inf`` is never formed, see
    :func:`shifted_target_logits`), while standard mode keeps the target's weight for it.

    Args:
        draft_tokens: ``[B, K]`` int64 or int32, the drafted tokens, ``1 <= K``.
        draft_logits: ``[B, K or K+1, V]`` fp32/bf16/fp16, the proposal's processed logits (``-inf``
            allowed); a ``K+1``-th row is used only in SSS mode.
        target_logits: ``[B, K+1, V]``, same dtype, the target's processed logits.
        ref_logits: ``None``, or like ``draft_logits``: the unaligned draft's logits (SSS).
        seeds: ``[B]`` int64, one random stream per row.
        positions: ``[B]`` int64 >= 0, the sequence position of each row's first draft token.
        backend: ``None`` (by device), ``"reference"``, ``"cpp"`` or ``"triton"``.
        check_values: raise ``ValueError`` for NaN or ``+inf`` logits, a row that is ``-inf``
            everywhere, draft ids outside ``[0, V)`` and negative positions, as the kernel finds
            them while reading (rows after a request's first rejection are not read; see
            :mod:`specalign.value_checks`). One host sync. Without it an out-of-range draft id
            counts as rejected, and NaN or ``+inf`` logits give unspecified tokens.

    Returns:
        :class:`VerifyOutput` ``(tokens [B, K+1], num_accepted [B], num_emitted [B])``.

    Example::

        >>> B, K, V = 2, 3, 50
        >>> draft_logits, target_logits = torch.randn(B, K, V), torch.randn(B, K + 1, V)
        >>> seeds, positions = torch.tensor([1, 2]), torch.tensor([7, 7])
        >>> drafts = sample(draft_logits.flatten(0, 1), seeds=seeds.repeat_interleave(K) + 99,
        ...                 positions=(positions[:, None] + torch.arange(K)).flatten()).view(B, K)
        >>> out = speculative_verify(drafts, draft_logits, target_logits, seeds=seeds, positions=positions)
        >>> out.tokens.shape, out.num_emitted.shape
        (torch.Size([2, 4]), torch.Size([2]))
    """
    _check_backend(backend)
    _check_types(draft_tokens=draft_tokens, draft_logits=draft_logits, target_logits=target_logits,
                 ref_logits=ref_logits, seeds=seeds, positions=positions)
    batch, num_draft = _check_tokens(draft_tokens)
    vocab = _check_logits("target_logits", target_logits, batch, (num_draft + 1,))
    _check_same_device("draft_tokens", draft_tokens, "target_logits", target_logits)
    _check_logits("draft_logits", draft_logits, batch, (num_draft, num_draft + 1), vocab, target_logits)
    if ref_logits is not None:
        _check_logits("ref_logits", ref_logits, batch, (draft_logits.shape[1],), vocab, target_logits)
    _check_seeds_positions(seeds, positions, batch, draft_tokens.device)
    args = (draft_tokens, draft_logits.contiguous(), target_logits.contiguous(),
            None if ref_logits is None else ref_logits.contiguous(), seeds, positions)
    tokens, num_accepted, num_emitted, status = _library.call("speculative_verify", backend, draft_tokens.device, *args)
    if check_values:
        raise_for_status(status, lambda: _verify_errors(draft_tokens, vocab, sss=ref_logits is not None))
    return VerifyOutput(tokens, num_accepted, num_emitted)


def speculative_verify_probs(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    *,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    backend: str | None = None,
    check_values: bool = True,
) -> VerifyOutput:
    """Standard speculative verification from probabilities (docs/math.md, "Speculative sampling").

    Reads only the gathered entries ``p_j(x_j)``, ``q_j(x_j)`` and, per row, the one residual row
    pair or bonus row it samples from: about ``8V`` bytes per row instead of ``4V(2K+1)``.
    A draft token with ``q = 0`` counts as rejected. Rows need not sum exactly to 1. With
    ``check_values``, what it reads must be finite and non-negative and a row it samples from must
    not be all zeros.

    Args:
        draft_tokens: ``[B, K]`` int64 or int32.
        draft_probs: ``[B, K, V]`` fp32/bf16/fp16, non-negative.
        target_probs: ``[B, K+1, V]``, same dtype, non-negative.
        seeds, positions, backend, check_values: as in :func:`speculative_verify`.

    Returns:
        :class:`VerifyOutput`; ``num_emitted = num_accepted + 1`` always.

    Example::

        >>> p, q = torch.rand(4, 3, 10).softmax(-1), torch.rand(4, 2, 10).softmax(-1)
        >>> x = torch.randint(0, 10, (4, 2))
        >>> speculative_verify_probs(x, q, p, seeds=torch.arange(4), positions=torch.zeros(4, dtype=torch.long)).tokens.shape
        torch.Size([4, 3])
    """
    _check_backend(backend)
    _check_types(draft_tokens=draft_tokens, draft_probs=draft_probs, target_probs=target_probs, seeds=seeds,
                 positions=positions)
    batch, num_draft = _check_tokens(draft_tokens)
    vocab = _check_logits("target_probs", target_probs, batch, (num_draft + 1,))
    _check_same_device("draft_tokens", draft_tokens, "target_probs", target_probs)
    _check_logits("draft_probs", draft_probs, batch, (num_draft,), vocab, target_probs)
    _check_seeds_positions(seeds, positions, batch, draft_tokens.device)
    args = (draft_tokens, draft_probs.contiguous(), target_probs.contiguous(), seeds, positions)
    tokens, num_accepted, num_emitted, status = _library.call("speculative_verify_probs", backend, draft_tokens.device, *args)
    if check_values:
        raise_for_status(status, lambda: _verify_probs_errors(draft_tokens, vocab))
    return VerifyOutput(tokens, num_accepted, num_emitted)


def sample(
    logits: torch.Tensor,
    *,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    backend: str | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits)`` with keyed, reproducible randomness.

    Row ``b`` uses the noise of ``(seeds[b], positions[b])`` only (Gumbel-max, one pass, nothing
    normalised or written), so a row's token does not depend on the batch it is in: the hook that
    lets pruning and compaction leave the survivors' continuations unchanged.

    Args:
        logits: ``[B, V]`` fp32/bf16/fp16, processed logits, ``-inf`` allowed (not a whole row).
        seeds: ``[B]`` int64.
        positions: ``[B]`` int64 >= 0.
        backend: as in :func:`speculative_verify`.
        check_values: raise ``ValueError`` for NaN or ``+inf`` logits, a row that is ``-inf``
            everywhere and negative positions (found while the kernel reads the logits; one host sync).

    Returns:
        ``[B]`` int64 token ids.

    Example::

        >>> sample(torch.randn(3, 100), seeds=torch.tensor([5, 5, 6]), positions=torch.tensor([0, 0, 0])).shape
        torch.Size([3])
    """
    _check_sample_arguments(backend, logits, seeds, positions)
    tokens, status = _library.call("sample", backend, logits.device, logits.contiguous(), seeds, positions)
    if check_values:
        raise_for_status(status, _sample_errors)
    return tokens


def _check_sample_arguments(backend, logits, seeds, positions):
    _check_backend(backend)
    _check_types(logits=logits, seeds=seeds, positions=positions)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    _check_logits("logits", logits.unsqueeze(1), logits.shape[0], (1,))
    _check_seeds_positions(seeds, positions, logits.shape[0], logits.device)


def _sample_errors():
    """The errors of sample's (and sample_with_stats's) status flags, in the order they are reported."""
    return [(value_checks.NEGATIVE_POSITION, lambda: "positions must be >= 0"),
            *_logits_errors("logits", value_checks.TARGET_NOT_FINITE, value_checks.TARGET_EMPTY_ROW)]


class SampleStats(NamedTuple):
    """Result of :func:`sample_with_stats`: the tokens of :func:`sample` and, per row, statistics of
    ``p = softmax(logits)`` over its support ``S`` (the finite logits).

    tokens: ``[B]`` int64, the drawn tokens (those :func:`sample` draws).
    log_prob: ``[B]`` float32, ``log p(token)``.
    entropy: ``[B]`` float32, ``-sum_S p log p``.
    certainty: ``[B]`` float32, self-certainty ``KL(U_S || p) = -log |S| - mean_S log p`` (Kang et al.,
        2025), 0 for a uniform ``p``; ``-mean_S log p``, DeepConf's token confidence over the whole
        support (Fu et al., 2025), is ``certainty + log |S|``.
    """

    tokens: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor
    certainty: torch.Tensor


def sample_with_stats(
    logits: torch.Tensor,
    *,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    backend: str | None = None,
    check_values: bool = True,
) -> SampleStats:
    """:func:`sample`, plus the statistics confidence scores read, in the same pass over the logits.

    The tokens are :func:`sample`'s, bit for bit, on every backend. The statistics come from an
    online log-sum-exp taken while each block of the row is read for the draw, so a loop that scores
    its samples by confidence reads the logits once, not twice. They agree across backends to float
    rounding (about 1e-6 relative; the reference computes in float64).

    Args:
        logits, seeds, positions, backend, check_values: as in :func:`sample`.

    Returns:
        :class:`SampleStats` ``(tokens, log_prob, entropy, certainty)``, each ``[B]``.

    Example::

        >>> out = sample_with_stats(torch.zeros(2, 8), seeds=torch.tensor([1, 2]), positions=torch.tensor([0, 0]))
        >>> out.tokens.shape, [round(float(x), 4) for x in out.entropy], [round(float(x), 4) for x in out.log_prob]
        (torch.Size([2]), [2.0794, 2.0794], [-2.0794, -2.0794])
    """
    _check_sample_arguments(backend, logits, seeds, positions)
    *stats, status = _library.call("sample_with_stats", backend, logits.device, logits.contiguous(), seeds, positions)
    if check_values:
        raise_for_status(status, _sample_errors)
    return SampleStats(*stats)


def compact_rows(
    tensors: Sequence[torch.Tensor],
    keep: torch.Tensor,
    dim: int | Sequence[int] = 0,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """Keep the rows ``keep`` of every tensor, in place, in their original order.

    After the call, rows ``0..len(keep)-1`` of each tensor along its batch dimension hold the kept
    rows; the rest are left as they were. No second full-size buffer is allocated: row ``i`` is
    copied from row ``keep[i] >= i``, so walking the destinations in increasing order never reads an
    overwritten row, and rows already in place (``keep[i] == i``) are not touched. One call covers
    every layer's keys and values, the ids, masks and per-row state (mixed dtypes, non-contiguous
    views); on a GPU it is one launch.

    Args:
        tensors: a list or tuple of tensors sharing the batch size ``B`` along their batch dimension;
            no two may share memory (views of one storage must cover disjoint byte ranges: pass the
            tensor they are views of instead).
        keep: ``[n]`` integer indices in ``[0, B)``, no repeats (any order; kept rows keep their order).
        dim: the batch dimension, one for all tensors or one per tensor.
        backend: as in :func:`speculative_verify`.

    Returns:
        views of the first ``n`` rows of each tensor.

    Example::

        >>> keys, ids = torch.randn(4, 2, 8, 16), torch.arange(12).view(4, 3)
        >>> keys2, ids2 = compact_rows([keys, ids], torch.tensor([1, 3]))
        >>> ids2.tolist()
        [[3, 4, 5], [9, 10, 11]]
    """
    _check_backend(backend)
    tensors = _check_tensor_list(tensors)
    _check_types(keep=keep)
    dims = _check_dims(tensors, dim)
    if keep.dim() != 1 or keep.dtype.is_floating_point or keep.dtype == torch.bool:
        raise ValueError(f"keep must be a 1-D integer tensor of row indices, got {keep.dtype} of shape {tuple(keep.shape)}")
    if not tensors:
        return []
    batch = _common_size(tensors, dims, "compact_rows", "batch")
    device = tensors[0].device
    keep = torch.sort(keep.to(device=device, dtype=torch.long)).values
    _check_keep(keep, batch)
    _library.call("compact_rows", backend, device, tensors, keep, dims)
    return [t.narrow(d, 0, keep.numel()) for t, d in zip(tensors, dims)]


def fork_rows(
    tensors: Sequence[torch.Tensor],
    index: torch.Tensor,
    dim: int | Sequence[int] = 0,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """Fork rows: rows ``0..n-1`` of every tensor take the rows ``index`` (repeats allowed), in place.

    The result equals ``tensor.index_select(dim, index.sort().values)``, written into the first
    ``n = len(index)`` rows of the tensor itself: a superset of :func:`compact_rows` (which keeps each
    row at most once). A row may be kept several times (a beam forked into samples), once, or
    dropped. The tensors are the buffers: nothing of their size is allocated, so a loop that keeps
    its batch within the tensors' batch size (e.g. ``W`` beams times ``K`` samples each round) moves
    only the rows that change, round after round. ``n`` may not exceed the batch size: to grow past
    it, allocate the larger buffer once and fork within it.

    Sorting is what makes it in place: with ``index`` sorted, each destination that reads a lower row
    is read only by later such destinations and each that reads a higher row only by earlier ones, so
    the first run in decreasing order, the second in increasing order, and every source is read
    before it is overwritten; rows with ``index[i] == i`` are not touched. One call covers every
    layer's keys and values and the per-row state (mixed dtypes, non-contiguous views); on a GPU it is
    one launch.

    Args:
        tensors: a list or tuple of tensors sharing the batch size ``B`` along their batch dimension;
            no two may share memory, as in :func:`compact_rows`.
        index: ``[n]`` integer rows in ``[0, B)``, ``n <= B``, any order, repeats allowed; the result
            holds them in increasing order.
        dim: the batch dimension, one for all tensors or one per tensor.
        backend: as in :func:`speculative_verify`.

    Returns:
        views of the first ``n`` rows of each tensor.

    Example::

        >>> ids = torch.arange(8).view(4, 2)
        >>> (forked,) = fork_rows([ids], torch.tensor([3, 1, 1]))
        >>> forked.tolist()
        [[2, 3], [2, 3], [6, 7]]
    """
    _check_backend(backend)
    tensors = _check_tensor_list(tensors)
    _check_types(index=index)
    dims = _check_dims(tensors, dim)
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"index must be a 1-D integer tensor of row indices, got {index.dtype} of shape {tuple(index.shape)}")
    if not tensors:
        return []
    batch = _common_size(tensors, dims, "fork_rows", "batch")
    device = tensors[0].device
    index = torch.sort(index.to(device=device, dtype=torch.long)).values
    if index.numel() > batch:
        raise ValueError(f"index has {index.numel()} rows but the tensors hold {batch}: fork_rows writes in place, "
                         "so the result may not have more rows than the tensors; allocate larger tensors once")
    if index.numel():
        low, high = torch.stack([index[0], index[-1]]).tolist()  # one host read
        if low < 0 or high >= batch:
            raise ValueError(f"index must lie in [0, {batch}), got min {low} and max {high}")
    _library.call("fork_rows", backend, device, tensors, index, dims)
    return [t.narrow(d, 0, index.numel()) for t, d in zip(tensors, dims)]


def compact_columns(
    tensors: Sequence[torch.Tensor],
    keep_mask: torch.Tensor,
    dim: int | Sequence[int],
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, move the kept positions to the right end of the sequence dimension, in place.

    Row ``b`` of every tensor keeps the positions where ``keep_mask[b]`` is true, in order, at the
    right end; the freed positions on the left are zeroed (left padding grows). Used to remove the
    cache entries of rejected draft tokens, whose number differs from row to row.

    Args:
        tensors: a list or tuple of tensors with batch dimension 0 and sequence dimension ``dim`` of
            size ``S``, e.g. keys and values ``[B, H, S, D]`` (``dim=2``) and ids ``[B, S]`` (``dim=1``);
            no two may share memory, as in :func:`compact_rows`.
        keep_mask: ``[B, S]`` bool.
        dim: the sequence dimension (>= 1), one for all tensors or one per tensor.
        backend: as in :func:`speculative_verify`.

    Returns:
        ``(lengths [B] int64, attention_mask [B, S] int64)``: kept positions per row, and 1 on the
        last ``lengths[b]`` positions of row ``b``.

    Example::

        >>> ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
        >>> lengths, mask = compact_columns([ids], torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]]).bool(), dim=1)
        >>> ids.tolist(), lengths.tolist()
        ([[0, 0, 1, 2], [0, 5, 7, 8]], [2, 3])
    """
    _check_backend(backend)
    tensors = _check_tensor_list(tensors)
    _check_types(keep_mask=keep_mask)
    dims = _check_dims(tensors, dim)
    if keep_mask.dim() != 2 or keep_mask.dtype != torch.bool:
        raise ValueError(f"keep_mask must be a [B, S] bool tensor, got {keep_mask.dtype} of shape {tuple(keep_mask.shape)}")
    batch, length = keep_mask.shape
    for i, (t, d) in enumerate(zip(tensors, dims)):
        if d < 1:
            raise ValueError(f"dim for tensors[{i}] must be >= 1 (dimension 0 is the batch), got {d}")
        if t.shape[0] != batch or t.shape[d] != length:
            raise ValueError(
                f"tensors[{i}] has shape {tuple(t.shape)}: expected batch {batch} at dim 0 and length {length} "
                f"at dim {d} to match keep_mask {tuple(keep_mask.shape)}"
            )
        if t.device != keep_mask.device:
            raise ValueError(f"tensors[{i}] is on {t.device} but keep_mask is on {keep_mask.device}")
    return _library.call("compact_columns", backend, keep_mask.device, tensors, keep_mask, dims)


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_tokens(draft_tokens):
    if draft_tokens.dim() != 2 or draft_tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"draft_tokens must be a [B, K] int64 or int32 tensor, got {draft_tokens.dtype} of shape {tuple(draft_tokens.shape)}"
        )
    batch, num_draft = draft_tokens.shape
    if num_draft < 1:
        raise ValueError("draft_tokens must hold at least one draft token per row (K >= 1)")
    return batch, num_draft


def _check_logits(name, logits, batch, allowed_rows, vocab=None, like=None):
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() != 3 or logits.shape[0] != batch or logits.shape[1] not in allowed_rows:
        rows = " or ".join(str(r) for r in allowed_rows)
        raise ValueError(f"{name} must have shape [B={batch}, {rows}, V], got {tuple(logits.shape)}")
    if vocab is not None and logits.shape[2] != vocab:
        raise ValueError(f"{name} has vocabulary size {logits.shape[2]}, but the target has {vocab}")
    if logits.shape[2] < 1:
        raise ValueError(f"{name} has an empty vocabulary dimension")
    if like is not None:
        if logits.dtype != like.dtype:
            raise ValueError(f"{name} has dtype {logits.dtype}, but the target has {like.dtype}; pass one dtype")
        if logits.device != like.device:
            raise ValueError(f"{name} is on {logits.device}, but the target is on {like.device}")
    return logits.shape[2]


def _check_seeds_positions(seeds, positions, batch, device):
    for name, t in (("seeds", seeds), ("positions", positions)):
        if t.dim() != 1 or t.shape[0] != batch or t.dtype != torch.int64:
            raise ValueError(f"{name} must be a [B={batch}] int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, but the tokens/logits are on {device}")


def _check_same_device(name, tensor, other_name, other):
    if tensor.device != other.device:
        raise ValueError(f"{name} is on {tensor.device}, but {other_name} is on {other.device}")


def _check_types(**arguments):
    for name, value in arguments.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_tensor_list(tensors):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list or tuple of tensors, got {type(tensors).__name__}"
                        + (" (wrap a single tensor in a list)" if isinstance(tensors, torch.Tensor) else ""))
    return list(tensors)


def _check_keep(keep, batch):
    """Indices in [0, batch), no repeats (``keep`` sorted): one host read."""
    if not keep.numel():
        return
    low, high, repeats = torch.stack([keep[0], keep[-1], (keep[1:] == keep[:-1]).sum()]).tolist()
    if low < 0 or high >= batch:
        raise ValueError(f"keep indices must lie in [0, {batch}), got min {low} and max {high}")
    if repeats:
        raise ValueError("keep has repeated indices; each row can be kept once")


def _verify_errors(draft_tokens, vocab, sss):
    """The errors of speculative_verify's status flags, in the order they are reported."""
    def token_range():
        low, high = int(draft_tokens.min()), int(draft_tokens.max())
        return f"draft_tokens must lie in [0, V={vocab}), got min {low} and max {high}"

    empty_target = ("draft_logits and target_logits share no token with nonzero probability in some row: the shifted "
                    "target pi_ref * pi_r / pi_d is zero everywhere" if sss else
                    "target_logits has a row that is -inf everywhere (no token can be drawn)")
    return [
        (value_checks.DRAFT_TOKEN_OUT_OF_RANGE, token_range),
        (value_checks.NEGATIVE_POSITION, lambda: "positions must be >= 0"),
        *_logits_errors("draft_logits", value_checks.DRAFT_NOT_FINITE, value_checks.DRAFT_EMPTY_ROW),
        (value_checks.TARGET_NOT_FINITE, lambda: "target_logits contains NaN or +inf"),
        (value_checks.REF_NOT_FINITE, lambda: "ref_logits contains NaN or +inf"),
        (value_checks.REF_ZERO_WHERE_DRAFT_IS_NOT, lambda: "ref_logits is -inf where draft_logits is finite: the reward "
         "tilt pi_r / pi_d would be infinite; give the drafts temperature-scaled logits without truncation"),
        (value_checks.TARGET_EMPTY_ROW, lambda: empty_target),
    ]


def _verify_probs_errors(draft_tokens, vocab):
    token_range = _verify_errors(draft_tokens, vocab, sss=False)[:2]
    return [
        *token_range,
        (value_checks.DRAFT_NOT_FINITE, lambda: "draft_probs must be finite and non-negative"),
        (value_checks.TARGET_NOT_FINITE, lambda: "target_probs must be finite and non-negative"),
        (value_checks.DRAFT_EMPTY_ROW, lambda: "draft_probs has a row of all zeros"),
        (value_checks.TARGET_EMPTY_ROW, lambda: "target_probs has a row of all zeros"),
    ]


def _logits_errors(name, not_finite_flag, empty_flag):
    return [(not_finite_flag, lambda: f"{name} contains NaN or +inf"),
            (empty_flag, lambda: f"{name} has a row that is -inf everywhere (no token can be drawn)")]


def _check_dims(tensors, dim):
    dims = [dim] * len(tensors) if isinstance(dim, int) else list(dim)
    if len(dims) != len(tensors):
        raise ValueError(f"dim must be an int or one int per tensor: got {len(dims)} dims for {len(tensors)} tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensors[{i}] is a {type(t).__name__}, not a tensor")
        if not -t.dim() <= dims[i] < t.dim():
            raise ValueError(f"dim {dims[i]} is out of range for tensors[{i}] of shape {tuple(t.shape)}")
        dims[i] %= t.dim()
        if any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
            raise ValueError(f"tensors[{i}] has overlapping memory (a zero stride); it cannot be compacted in place")
    _check_disjoint(tensors)
    return dims


def _check_disjoint(tensors):
    """No two tensors may share memory: compacting shared memory twice corrupts it. Views of one storage
    must cover disjoint byte ranges (interleaved views count as sharing). Needs real addresses: a traced
    graph (torch.compile) skips it."""
    if torch.compiler.is_compiling():
        return
    spans = []  # (device, storage, first byte, end byte, index)
    for i, t in enumerate(tensors):
        if t.numel() and t.device.type != "meta":
            last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
            spans.append((str(t.device), t.untyped_storage().data_ptr(), t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size(), i))
    spans.sort()
    for (device, storage, _, end, i), (next_device, next_storage, next_start, _, j) in zip(spans, spans[1:]):
        if (device, storage) == (next_device, next_storage) and next_start < end:
            first, second = sorted((i, j))
            raise ValueError(f"tensors[{second}] and tensors[{first}] share memory (views of one storage whose byte ranges "
                             "overlap); pass each memory region once, e.g. the tensor they are views of")


def _common_size(tensors, dims, op, what):
    size = tensors[0].shape[dims[0]]
    for i, (t, d) in enumerate(zip(tensors, dims)):
        if t.shape[d] != size:
            raise ValueError(f"{op}: tensors[{i}] has {what} size {t.shape[d]} at dim {d}, tensors[0] has {size}")
        if t.device != tensors[0].device:
            raise ValueError(f"{op}: tensors[{i}] is on {t.device}, tensors[0] on {tensors[0].device}")
    return size
