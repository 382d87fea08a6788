"""Confidence, the reward-free scorer read from the generator's own logits inside Speculative
Rejection's loop, and ConfidenceEarlyStop (DeepConf-online): scores equal the definitions computed
from the model, sampling is unchanged, stopping follows the threshold, bad arguments are refused."""
import math

import pytest
import torch
from helpers import EOS, PAD, prompts_with_left_padding, tiny_llama

from specalign import BestOfN, Confidence, ConfidenceEarlyStop, SpeculativeRejection
from specalign.confidence import trace_confidence

pytestmark = pytest.mark.usefixtures("one_thread")
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0, scale=2.0)


def mean_token_reward(prompts, answers):
    return torch.tensor([a.double().mean().item() if len(a) else 0.0 for a in answers])


def generate(model, method, **kwargs):
    ids, mask = prompts_with_left_padding()
    return model.generate(input_ids=ids, attention_mask=mask, custom_generate=method, do_sample=True,
                          max_new_tokens=NEW_TOKENS, pad_token_id=PAD, return_dict_in_generate=True, **kwargs)


def suppress_eos(logits):
    return logits.masked_fill(torch.arange(logits.shape[-1]) == EOS, -math.inf)


def eos_bias_then_temperature(logits):
    """HF's sequence_bias={(EOS,): 1.0}, then temperature 0.7 (processors run before warpers)."""
    return (logits + 1.0 * (torch.arange(logits.shape[-1]) == EOS)) / 0.7


@torch.no_grad()
def token_values(model, out, statistic, process=lambda logits: logits):
    """[P, n, NEW_TOKENS] each candidate's token values, recomputed from a plain forward of the model
    and the logits processing ``process``."""
    ids, mask = prompts_with_left_padding()
    tokens = out.candidate_tokens
    num_prompts, n, _ = tokens.shape
    answers = tokens.flatten(0, 1).clamp_min(0)
    full = torch.cat([ids.repeat_interleave(n, 0), answers], 1)
    full_mask = torch.cat([mask.repeat_interleave(n, 0), torch.ones_like(answers)], 1)
    positions = (full_mask.cumsum(1) - 1).clamp_min(0)
    logits = model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits[:, ids.shape[1] - 1 : -1]
    log_p = process(logits.double()).log_softmax(-1)
    support = log_p > -math.inf
    if statistic == "certainty":
        values = -log_p.masked_fill(~support, 0).sum(-1) / support.sum(-1) - support.sum(-1).log()
    elif statistic == "negative_entropy":
        values = (log_p.exp() * log_p.masked_fill(~support, 0)).sum(-1)
    else:
        values = log_p.gather(-1, answers[..., None]).squeeze(-1)
    return values.view(num_prompts, n, -1)


def test_trace_confidence_is_the_lowest_window_mean():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(20, 9, generator=generator)
    lengths = torch.randint(1, 10, (20,), generator=generator)
    for window in (None, 1, 3, 9, 12):
        scores = trace_confidence(values, lengths, window)
        for row, length in enumerate(lengths.tolist()):
            kept = values[row, :length].double()
            if window is None or length < window:
                expected = kept.mean()
            else:
                expected = min(kept[i : i + window].mean() for i in range(length - window + 1))
            torch.testing.assert_close(scores[row], expected, msg=f"window {window}, row {row}")


@pytest.mark.parametrize("statistic", ["certainty", "negative_entropy", "log_prob"])
def test_scores_are_the_model_confidence_and_sampling_is_unchanged(model, statistic):
    scored = generate(model, SpeculativeRejection(Confidence(window=4, statistic=statistic), n=6, alpha=0.0,
                                                  decision_tokens=(), seed=5), temperature=0.7,
                      sequence_bias={(EOS,): 1.0})
    plain = generate(model, BestOfN(mean_token_reward, n=6, seed=5), temperature=0.7, sequence_bias={(EOS,): 1.0})
    assert torch.equal(scored.candidate_tokens, plain.candidate_tokens)
    assert scored.reward_calls == 0
    values = token_values(model, scored, statistic, eos_bias_then_temperature)
    lengths = scored.candidate_lengths
    expected = trace_confidence(values.flatten(0, 1), lengths.flatten(), 4).view(lengths.shape)
    torch.testing.assert_close(scored.candidate_rewards.double(), expected, rtol=1e-4, atol=1e-4)
    best = expected.argmax(-1)
    assert torch.equal(scored.rewards, scored.candidate_rewards.gather(1, best[:, None]).squeeze(1))


def test_pruning_by_confidence_keeps_survivors_tokens(model):
    pruned = generate(model, SpeculativeRejection(Confidence(window=3), n=8, alpha=0.5, decision_tokens=[3, 6], seed=2),
                      suppress_tokens=[EOS])
    plain = generate(model, BestOfN(mean_token_reward, n=8, seed=2), suppress_tokens=[EOS])
    assert pruned.batch_sizes == [24, 12, 6]
    lengths = pruned.candidate_lengths
    for prompt in range(3):
        for sample in range(8):
            length = int(lengths[prompt, sample])
            assert torch.equal(pruned.candidate_tokens[prompt, sample, :length],
                               plain.candidate_tokens[prompt, sample, :length])
    # The survivors of the first decision are each prompt's 4 most confident samples at 3 tokens.
    values = token_values(model, plain, "certainty", suppress_eos)
    at_first = trace_confidence(values.flatten(0, 1), torch.full((24,), 3), 3).view(3, 8)
    survived = lengths > 3
    for prompt in range(3):
        assert set(at_first[prompt].topk(4).indices.tolist()) == set(survived[prompt].nonzero().flatten().tolist())


def test_samples_stop_when_the_last_window_falls_below_the_threshold(model):
    threshold = 0.03  # about the median lowest window of these samples
    out = generate(model, SpeculativeRejection(Confidence(window=3, stop_below=threshold), n=8, alpha=0.0,
                                               decision_tokens=[3, 6, 9], seed=4), suppress_tokens=[EOS])
    plain = generate(model, BestOfN(mean_token_reward, n=8, seed=4), suppress_tokens=[EOS])
    values = token_values(model, plain, "certainty", suppress_eos)
    window_means = values.unfold(-1, 3, 1).mean(-1)  # [P, n, windows], window i ends at token i + 3
    stopped = out.candidate_rewards == -math.inf
    assert 0 < int(stopped.sum()) < stopped.numel(), "the test needs stopped and finished samples"
    for prompt in range(3):
        for sample in range(8):
            below = (window_means[prompt, sample] < threshold).nonzero()
            length = int(out.candidate_lengths[prompt, sample])
            if below.numel():
                assert bool(stopped[prompt, sample]) and length == int(below[0]) + 3
            else:
                assert not bool(stopped[prompt, sample]) and length == NEW_TOKENS
            assert torch.equal(out.candidate_tokens[prompt, sample, :length], plain.candidate_tokens[prompt, sample, :length])
    assert out.tokens_generated < plain.tokens_generated


def test_early_stop_sets_thresholds_from_the_warmup_and_returns_the_most_confident(model):
    method = ConfidenceEarlyStop(n=12, warmup=4, keep=0.5, window=3, seed=11)
    out = generate(model, method, suppress_tokens=[EOS])
    warm = generate(model, SpeculativeRejection(Confidence(window=3), n=4, alpha=0.0, decision_tokens=(), seed=11),
                    suppress_tokens=[EOS])
    assert out.candidate_tokens.shape[:2] == (3, 12)
    assert torch.equal(out.candidate_tokens[:, :4], warm.candidate_tokens)
    thresholds = warm.candidate_rewards.quantile(0.5, dim=1)
    later = out.candidate_rewards[:, 4:]
    stopped = ~out.candidate_finished[:, 4:]
    assert bool((later[stopped] == -math.inf).all()) and bool(stopped.any())
    assert bool((later[~stopped] >= thresholds[:, None].expand_as(later)[~stopped]).all())
    best = out.candidate_rewards.masked_fill(~out.candidate_finished, -math.inf).max(1).values
    torch.testing.assert_close(out.rewards, best)
    assert out.tokens_generated < 12 * 3 * NEW_TOKENS


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Confidence(window=0), "window"),
        (lambda: Confidence(statistic="entropy"), "statistic"),
        (lambda: Confidence(window=None, stop_below=0.5), "stop_below needs a window"),
        (lambda: Confidence(stop_below=[[0.5]]), "stop_below must be"),
        (lambda: ConfidenceEarlyStop(n=4, warmup=4), "warmup"),
        (lambda: ConfidenceEarlyStop(keep=0.0), "keep"),
        (lambda: ConfidenceEarlyStop(window=0), "window"),
    ],
)
def test_bad_arguments_raise_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_threshold_per_prompt_must_match_the_prompts(model):
    with pytest.raises(ValueError, match="2 thresholds for 3 prompts"):
        generate(model, SpeculativeRejection(Confidence(window=2, stop_below=[0.1, 0.2]), n=2, alpha=0.0))
