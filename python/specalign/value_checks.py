"""The value checks the sampling kernels make in their own pass over the inputs, and their errors.

``speculative_verify``, ``speculative_verify_probs`` and ``sample`` return, besides their result, a
0-dim int32 ``status``: the OR of the flags below over every row, computed while the kernel reads
the inputs (no second pass). The wrapper reads it once (one host sync) when ``check_values=True``
and raises the ``ValueError`` of the first flag set. ``csrc/value_checks.h`` mirrors the values.

What is checked is what the op reads: every draft token id and position, and the rows of logits
or probabilities the result depends on (the rows up to and including the one each request draws
its last token from; a row after the first rejection cannot change the result and is not read).
A NaN, ``+inf`` or empty row of logits forces a rejection at or before its own position, so a bad
row that could matter is always reached.

Without checks the kernels still never read out of bounds: a draft token outside ``[0, V)`` is
rejected (as a token of zero draft probability); NaN or ``+inf`` inputs give unspecified tokens.
See docs/math.md, "Value checks".
"""
from __future__ import annotations

from typing import Callable

import torch

DRAFT_TOKEN_OUT_OF_RANGE = 1 << 0
NEGATIVE_POSITION = 1 << 1
DRAFT_NOT_FINITE = 1 << 2  # NaN or +inf (probabilities: also negative or -inf)
TARGET_NOT_FINITE = 1 << 3
REF_NOT_FINITE = 1 << 4
REF_ZERO_WHERE_DRAFT_IS_NOT = 1 << 5  # ref_logits -inf where draft_logits is finite
DRAFT_EMPTY_ROW = 1 << 6  # logits: -inf everywhere; probabilities: no entry above 0
TARGET_EMPTY_ROW = 1 << 7  # the same for the (SSS-shifted) target


def raise_for_status(status: torch.Tensor, errors: Callable[[], list[tuple[int, Callable[[], str]]]]) -> None:
    """Raise the ``ValueError`` of the first flag set in ``status`` (one host read).

    ``errors()`` lists (flag, message) pairs in the order they are reported; it runs only on failure,
    so a message may look at the inputs again for detail.
    """
    flags = int(status)
    if flags:
        for flag, message in errors():
            if flags & flag:
                raise ValueError(message())
        raise ValueError(f"the inputs failed a value check (status {flags:#x})")
