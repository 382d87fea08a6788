"""Pearson and Kendall tau of prefix rewards against final rewards (specalign.world.prefix_correlation)."""
import math

import pytest
import torch

from specalign.world.prefix_correlation import kendall_tau, prefix_correlations


def test_kendall_tau_counts_concordant_pairs():
    # pairs (0,1) and (0,2) concordant, (1,2) discordant: (2 - 1) / 3
    assert kendall_tau(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])) == pytest.approx(1 / 3)


def test_kendall_tau_b_discounts_ties():
    # x ties on (0,1); the other two pairs are concordant: 2 / sqrt((3 - 1) * (3 - 0))
    assert kendall_tau(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(2 / math.sqrt(6))


def test_kendall_tau_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="1-D of one length"):
        kendall_tau(torch.zeros(3), torch.zeros(4))


def test_prefix_correlations_score_each_prefix_length():
    # The "reward model" counts answer tokens equal to 7; the final reward counts them in the whole answer.
    answers = [torch.tensor(a) for a in ([7, 7, 1, 7], [1, 1, 7, 7], [7, 1, 1, 1], [1, 1, 1, 1])]
    prompts = [torch.tensor([5])] * len(answers)
    final = torch.tensor([3.0, 2.0, 1.0, 0.0])
    table = prefix_correlations(lambda p, a: torch.tensor([float((x == 7).sum()) for x in a]), prompts, answers,
                                final, lengths=(1, 4))
    assert [row.length for row in table] == [1, 4]
    assert table[1].pearson == pytest.approx(1.0) and table[1].kendall_tau == pytest.approx(1.0)
    # first token only: scores 1, 0, 1, 0
    assert table[0].kendall_tau == pytest.approx(2 / math.sqrt(4 * 6))
