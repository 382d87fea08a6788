"""BeamSearch (weak-to-strong chunk-level search on fork_rows): one beam of one sample is sampling
token for token, chunk scores from forked caches equal the implicit reward computed from scratch,
the best finished answer is never lost, and bad arguments are refused."""
import pytest
import torch
from helpers import EOS, PAD, prompts_with_left_padding, tiny_llama

from specalign import BeamSearch, BestOfN, ImplicitReward

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0, scale=2.0)


@pytest.fixture(scope="module")
def aligned():
    return tiny_llama(1, scale=2.0)


@pytest.fixture(scope="module")
def ref():
    return tiny_llama(2, scale=2.0)


def generate(target, method, max_new_tokens=12, **kwargs):
    ids, mask = prompts_with_left_padding()
    return target.generate(input_ids=ids, attention_mask=mask, custom_generate=method, do_sample=True,
                           max_new_tokens=max_new_tokens, pad_token_id=PAD, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 20])
def test_one_beam_of_one_sample_is_sampling(target, aligned, ref, chunk_tokens):
    search = generate(target, BeamSearch(aligned, ref, 1, 1, chunk_tokens, seed=3), temperature=0.8,
                      sequence_bias={(EOS,): 1.0})
    sampled = generate(target, BestOfN(lambda p, a: torch.zeros(len(a)), n=1, seed=3), temperature=0.8,
                       sequence_bias={(EOS,): 1.0})
    assert torch.equal(search.sequences, sampled.sequences)
    assert search.tokens_generated == sampled.tokens_generated


def test_scores_equal_the_implicit_reward_from_scratch(target, aligned, ref):
    """Every finished answer's score, summed chunk by chunk from forked caches, is the implicit reward
    of the whole answer computed without any cache."""
    out = generate(target, BeamSearch(aligned, ref, 2, 3, 3, seed=1), sequence_bias={(EOS,): 1.0})
    ids, mask = prompts_with_left_padding()
    reward = ImplicitReward(aligned, ref)
    prompts, answers, scores = [], [], []
    for prompt in range(ids.shape[0]):
        for tokens, score in zip(out.candidate_tokens[prompt], out.candidate_scores[prompt]):
            if score > -torch.inf:
                prompts.append(ids[prompt][mask[prompt].bool()])
                answers.append(tokens[tokens >= 0])
                scores.append(float(score))
    assert len(answers) >= 3 * 3  # every prompt's rows finish by the length limit, some earlier
    torch.testing.assert_close(reward(prompts, answers).double(), torch.tensor(scores, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


def test_the_best_finished_answer_is_never_lost(target, aligned, ref):
    ids, _ = prompts_with_left_padding()
    early_best = 0
    for seed in range(4):
        out = generate(target, BeamSearch(aligned, ref, 2, 2, 2, seed=seed), max_new_tokens=14,
                       sequence_bias={(EOS,): 1.5})
        best = out.candidate_scores.argmax(1)
        for prompt in range(ids.shape[0]):
            answer = out.candidate_tokens[prompt, best[prompt]]
            answer = answer[answer >= 0]
            returned = out.sequences[prompt, ids.shape[1]:]
            assert torch.equal(returned[: len(answer)], answer) and bool((returned[len(answer):] == PAD).all())
            assert out.scores[prompt] == out.candidate_scores[prompt, best[prompt]]
            early_best += int(out.candidate_rounds[prompt, best[prompt]] < out.rounds - 1)
    assert early_best > 0, "the test needs a best answer that finished before the search ended"


def test_beams_fork_into_distinct_samples(target, aligned, ref):
    out = generate(target, BeamSearch(aligned, ref, 1, 4, 2, seed=5), suppress_tokens=[EOS])
    # One beam forked into 4 rows each chunk: the 4 final answers share the beam's first 10 tokens
    # and differ in the last chunk, each drawn from its own stream.
    finals = out.candidate_tokens[:, :4]
    assert bool((out.candidate_rounds[:, :4] == 5).all())
    assert bool((finals[:, :, :10] == finals[:, :1, :10]).all())
    assert all(len({tuple(answer[10:].tolist()) for answer in finals[prompt]}) > 1 for prompt in range(3))
    assert out.tokens_generated == 3 * (4 * 12)  # 4 rows per prompt sampled every token
    assert out.rows_decoded == 12 * 11


def test_default_backend_matches_the_reference(target, aligned, ref):
    default = generate(target, BeamSearch(aligned, ref, 2, 2, 3, seed=8))
    reference = generate(target, BeamSearch(aligned, ref, 2, 2, 3, seed=8, backend="reference"))
    assert torch.equal(default.sequences, reference.sequences)
    assert torch.equal(default.candidate_scores, reference.candidate_scores)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_beams=0), "num_beams"), (dict(samples_per_beam=1.5), "samples_per_beam"),
     (dict(chunk_tokens=True), "chunk_tokens")],
)
def test_bad_arguments_raise_value_errors(aligned, ref, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BeamSearch(aligned, ref, **kwargs)


def test_do_sample_is_required(target, aligned, ref):
    ids, mask = prompts_with_left_padding()
    with pytest.raises(ValueError, match="do_sample"):
        target.generate(input_ids=ids, attention_mask=mask, custom_generate=BeamSearch(aligned, ref), do_sample=False,
                        max_new_tokens=4, pad_token_id=PAD)
