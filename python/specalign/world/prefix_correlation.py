"""How well the proxy reward of an answer's prefix predicts the answer's final gold reward.

Speculative Rejection prunes on the reward of partial answers, so its gain rests on this
correlation (Sun et al., 2024, plot it against the prefix length in their appendix).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class PrefixCorrelation:
    length: int  # answer tokens kept (answers shorter than that are scored whole)
    pearson: float
    kendall_tau: float


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x.double(), y.double()]))[0, 1])


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kendall's tau-b (ties in either variable discounted), from all pairs at once."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {tuple(x.shape)} and {tuple(y.shape)}")
    dx = torch.sign(x.double()[:, None] - x.double()[None, :])
    dy = torch.sign(y.double()[:, None] - y.double()[None, :])
    concordance = float((dx * dy).sum())
    denominator = float((dx != 0).sum()) * float((dy != 0).sum())
    return concordance / denominator**0.5 if denominator > 0 else float("nan")


@torch.no_grad()
def prefix_correlations(
    reward_model: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor],
    prompts: Sequence[torch.Tensor],
    answers: Sequence[torch.Tensor],
    final_gold: torch.Tensor,
    lengths: Sequence[int],
) -> list[PrefixCorrelation]:
    """Pearson and Kendall tau between ``reward_model(prompt, answer[:k])`` and ``final_gold``, per ``k``.

    ``reward_model`` is called as the engines call it (lists of 1-D generator token ids), e.g. a
    :class:`specalign.RewardModel`; ``answers`` are the whole answers, eos included where they ended.
    """
    if not len(prompts) == len(answers) == len(final_gold):
        raise ValueError(f"got {len(prompts)} prompts, {len(answers)} answers and {len(final_gold)} gold rewards")
    table = []
    for length in lengths:
        proxy = reward_model(list(prompts), [answer[:length] for answer in answers])
        table.append(PrefixCorrelation(length, pearson(proxy, final_gold), kendall_tau(proxy, final_gold)))
    return table


def format_prefix_correlations(table: Sequence[PrefixCorrelation]) -> str:
    lines = ["prefix tokens   Pearson r   Kendall tau"]
    lines += [f"{row.length:>13}   {row.pearson:>9.3f}   {row.kendall_tau:>11.3f}" for row in table]
    return "\n".join(lines)
