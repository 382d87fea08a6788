"""Speculative Rejection and Best-of-N with ``draft=``: every sample follows the generator's
distribution (or SSS's shifted target) exactly, survivors keep their tokens, alpha 0 is Best-of-N
with the same draft, and bad configurations are refused."""
import pytest
import torch
from helpers import (
    EOS,
    NEW_TOKENS,
    PAD,
    PROMPT,
    all_continuations,
    assert_follows,
    canonical_codes,
    exact_distribution,
    processed_log_probs,
    prompts_with_left_padding,
    step_log_probs,
    tiny_llama,
)

from specalign import BestOfN, Confidence, SpeculativeRejection

SAMPLES = 100_000
SAMPLES_PER_CALL = 25_000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def draft():
    return tiny_llama(1)


@pytest.fixture(scope="module")
def ref_draft():
    return tiny_llama(2)


def mean_token_reward(prompts, answers):
    return torch.tensor([a.double().mean().item() if len(a) else 0.0 for a in answers])


def candidate_codes(method_for_seed, target, length=NEW_TOKENS):
    """Canonical codes of the first ``length`` tokens of every candidate of ``SAMPLES`` samples of PROMPT."""
    codes = []
    for seed in range(SAMPLES // SAMPLES_PER_CALL):
        out = target.generate(input_ids=PROMPT, custom_generate=method_for_seed(seed), do_sample=True,
                              max_new_tokens=NEW_TOKENS, pad_token_id=PAD, return_dict_in_generate=True)
        tokens = out.candidate_tokens[0, :, :length]
        codes.append(canonical_codes(tokens.masked_fill(tokens < 0, PAD)))
    return torch.cat(codes)


@pytest.mark.slow
def test_candidates_follow_the_generator_distribution(target, draft):
    continuations = all_continuations()
    expected = exact_distribution(processed_log_probs(step_log_probs(target, PROMPT, continuations)), continuations)
    codes = candidate_codes(lambda seed: BestOfN(mean_token_reward, n=SAMPLES_PER_CALL, seed=seed, draft=draft,
                                                 num_draft_tokens=2), target)
    assert_follows(codes, expected, "Best-of-N with a draft, K=2")


@pytest.mark.slow
def test_candidates_follow_the_shifted_target_with_a_reference_draft(target, draft, ref_draft):
    continuations = all_continuations()
    tilt = (processed_log_probs(step_log_probs(draft, PROMPT, continuations))
            - processed_log_probs(step_log_probs(ref_draft, PROMPT, continuations)))
    shifted = (processed_log_probs(step_log_probs(target, PROMPT, continuations)) + tilt).log_softmax(-1)
    codes = candidate_codes(lambda seed: BestOfN(mean_token_reward, n=SAMPLES_PER_CALL, seed=100 + seed, draft=draft,
                                                 ref_draft=ref_draft, num_draft_tokens=2), target)
    assert_follows(codes, exact_distribution(shifted, continuations), "Best-of-N with SSS, K=2")


@pytest.mark.slow
def test_pruned_candidates_follow_the_generator_up_to_the_first_decision(target, draft):
    """Pruning at 2 new tokens stops half the samples there; their first 2 tokens are still exact."""
    continuations = all_continuations(length=2)
    expected = exact_distribution(processed_log_probs(step_log_probs(target, PROMPT, continuations)), continuations)
    codes = candidate_codes(lambda seed: SpeculativeRejection(mean_token_reward, n=SAMPLES_PER_CALL, alpha=0.5,
                                                              decision_tokens=[2], seed=200 + seed, draft=draft,
                                                              num_draft_tokens=3), target, length=2)
    assert_follows(codes, expected, "Speculative Rejection with a draft, first 2 tokens")


def generate(target, method, max_new_tokens=12, **kwargs):
    ids, mask = prompts_with_left_padding()
    return target.generate(input_ids=ids, attention_mask=mask, custom_generate=method, do_sample=True,
                           max_new_tokens=max_new_tokens, pad_token_id=PAD, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("sss", [False, True], ids=["draft", "SSS"])
def test_alpha_zero_is_best_of_n_with_the_same_draft(target, draft, ref_draft, sss):
    drafts = dict(draft=draft, ref_draft=ref_draft if sss else None, num_draft_tokens=3)
    pruning_off = generate(target, SpeculativeRejection(mean_token_reward, n=6, alpha=0.0, decision_tokens=[3, 6],
                                                        seed=7, **drafts), sequence_bias={(EOS,): 2.0})
    baseline = generate(target, BestOfN(mean_token_reward, n=6, seed=7, **drafts), sequence_bias={(EOS,): 2.0})
    assert pruning_off.decision_lengths == [3, 6] and baseline.decision_lengths == []
    assert torch.equal(pruning_off.candidate_tokens, baseline.candidate_tokens)
    assert torch.equal(pruning_off.sequences, baseline.sequences)
    torch.testing.assert_close(pruning_off.rewards, baseline.rewards, rtol=0, atol=0)
    assert bool((baseline.candidate_lengths < 6).any())  # some answers ended before a decision
    assert pruning_off.tokens_generated == baseline.tokens_generated
    assert 0 < baseline.acceptance_rate < 1 and baseline.target_calls < 12


def test_survivors_keep_their_tokens(target, draft):
    pruned = generate(target, SpeculativeRejection(mean_token_reward, n=8, alpha=0.5, decision_tokens=[2, 4, 8],
                                                   seed=3, draft=draft), suppress_tokens=[EOS])
    unpruned = generate(target, BestOfN(mean_token_reward, n=8, seed=3, draft=draft), suppress_tokens=[EOS])
    assert pruned.batch_sizes == [24, 12, 6, 3]
    lengths, finished = pruned.candidate_lengths, pruned.candidate_finished
    # The last survivors ran to the end, and so did rows that got there while slower ones caught up.
    assert bool((lengths[finished] == 12).all()) and int(finished.sum()) >= 3
    assert bool((lengths[~finished] >= 2).all())  # every pruned sample reached its decision point
    for prompt in range(3):
        for sample in range(8):
            length = int(lengths[prompt, sample])
            assert torch.equal(pruned.candidate_tokens[prompt, sample, :length],
                               unpruned.candidate_tokens[prompt, sample, :length]), (prompt, sample)
    best = pruned.candidate_rewards.masked_fill(~pruned.candidate_finished, -torch.inf).argmax(-1)
    for prompt in range(3):
        assert pruned.rewards[prompt] == unpruned.candidate_rewards[prompt, best[prompt]]
    assert pruned.tokens_generated < unpruned.tokens_generated
    assert pruned.rows_decoded < unpruned.rows_decoded


def test_reward_model_scores_each_row_at_the_decision_length(target, draft):
    seen = []

    def recording_reward(prompts, answers):
        seen.append([len(a) for a in answers])
        return mean_token_reward(prompts, answers)

    out = generate(target, SpeculativeRejection(recording_reward, n=4, alpha=0.5, decision_tokens=[3, 7], seed=1,
                                                draft=draft, num_draft_tokens=4), suppress_tokens=[EOS])
    assert out.reward_calls == 3
    assert set(seen[0]) == {3} and set(seen[1]) == {7}  # no sample finishes before 12 tokens here
    assert set(seen[2]) == {12}


def test_default_backend_matches_the_reference(target, draft):
    method = dict(n=4, alpha=0.5, decision_tokens=[2, 5], seed=9, draft=draft)
    default = generate(target, SpeculativeRejection(mean_token_reward, **method))
    reference = generate(target, SpeculativeRejection(mean_token_reward, backend="reference", **method))
    assert torch.equal(default.candidate_tokens, reference.candidate_tokens)
    assert torch.equal(default.sequences, reference.sequences)


def test_draft_equal_to_the_generator_accepts_every_draft(target):
    out = generate(target, BestOfN(mean_token_reward, n=3, seed=2, draft=target, num_draft_tokens=3),
                   suppress_tokens=[EOS])
    assert out.acceptance_rate == 1.0
    assert out.target_calls == 1 + 3  # the prompt, then 4 tokens per verification for 12 tokens


def test_budget_sizes_n_and_places_decisions_with_every_cache(target, draft):
    ids, _ = prompts_with_left_padding()
    out = generate(target, SpeculativeRejection(mean_token_reward, n=None, alpha=0.5, max_batch_tokens=3 * 16 * 8,
                                                seed=1, draft=draft), max_new_tokens=16, suppress_tokens=[EOS])
    assert out.peak_batch_size == 3 * (3 * 16 * 8 // (3 * (ids.shape[1] + 2)))  # first decision at 16 / 8 tokens
    assert out.decision_lengths and out.decision_lengths == sorted(out.decision_lengths)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ref_draft="draft"), "give the aligned draft as draft="),
        (dict(draft="draft", num_draft_tokens=0), "num_draft_tokens"),
        (dict(reward=Confidence(window=2), draft="draft"), "Confidence reads the generator's logits"),
    ],
)
def test_bad_configurations_are_refused(draft, kwargs, match):
    kwargs = {key: draft if value == "draft" else value for key, value in kwargs.items()}
    reward = kwargs.pop("reward", mean_token_reward)
    with pytest.raises(ValueError, match=match):
        SpeculativeRejection(reward, n=2, **kwargs)
