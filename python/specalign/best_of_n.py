"""Best-of-N on the Speculative Rejection engine: the baseline it is compared with, on one engine."""
from __future__ import annotations

from collections.abc import Callable

from specalign.reward_model import RewardModel
from specalign.speculative_rejection import SpeculativeRejection


class BestOfN(SpeculativeRejection):
    """Sample ``n`` answers per prompt, score them once at the end, return the best.

    :class:`~specalign.SpeculativeRejection` with no decision points (``alpha = 0``,
    ``decision_tokens=()``): the same prefill, sampling streams, stopping and scoring, so for the
    same ``seed`` its samples are token for token those Speculative Rejection starts from.
    ``n=None`` takes the most samples whose cache at full length fits the memory budget. With
    ``draft=`` (and ``ref_draft=`` for SSS) the samples decode by exact speculative sampling, as in
    :class:`~specalign.SpeculativeRejection`.

    Example::

        out = model.generate(**inputs, custom_generate=BestOfN(reward_model, n=16), do_sample=True,
                             max_new_tokens=64)
    """

    def __init__(
        self,
        reward_model: RewardModel | Callable,
        n: int | None = None,
        *,
        memory_budget: int | None = None,
        max_batch_tokens: int | None = None,
        seed: int | None = None,
        progress: bool = False,
        backend: str | None = None,
        draft=None,
        num_draft_tokens: int = 4,
        ref_draft=None,
    ):
        super().__init__(
            reward_model, n, alpha=0.0, decision_tokens=(), memory_budget=memory_budget,
            max_batch_tokens=max_batch_tokens, seed=seed, progress=progress, backend=backend, draft=draft,
            num_draft_tokens=num_draft_tokens, ref_draft=ref_draft,
        )
