"""RewardShiftedSpeculativeSampling through ``generate``: each token follows norm(pi_ref * pi_r / pi_d)
exactly, SSS with pi_r = pi_d is standard speculative sampling token for token, greedy SSS is the
greedy decoding of the shifted target, and bad inputs name the argument."""
import pytest
import torch
from helpers import (
    BACKEND,
    PAD,
    PROCESSING,
    PROMPT,
    VOCAB,
    all_continuations,
    assert_follows,
    exact_distribution,
    processed_log_probs,
    prompts_with_left_padding,
    sample_codes,
    step_log_probs,
    tiny_llama,
)
from transformers import XLNetConfig, XLNetLMHeadModel

from specalign import RewardShiftedSpeculativeSampling, SpeculativeSampling

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def aligned_draft():
    return tiny_llama(1)


@pytest.fixture(scope="module")
def ref_draft():
    return tiny_llama(2)


@pytest.mark.slow
@pytest.mark.parametrize("num_draft_tokens", [1, 3])
@pytest.mark.parametrize("processing", PROCESSING)
def test_tokens_follow_the_shifted_target(target, aligned_draft, ref_draft, num_draft_tokens, processing):
    temperature, top_k = processing.get("temperature", 1.0), processing.get("top_k")
    continuations = all_continuations()
    target_log_probs = processed_log_probs(step_log_probs(target, PROMPT, continuations), temperature, top_k)
    tilt = (processed_log_probs(step_log_probs(aligned_draft, PROMPT, continuations), temperature)
            - processed_log_probs(step_log_probs(ref_draft, PROMPT, continuations), temperature))
    shifted = (target_log_probs + tilt).log_softmax(-1)  # per token: norm(pi_ref * pi_r / pi_d)
    expected = exact_distribution(shifted, continuations)
    codes = sample_codes(
        target,
        lambda seeds: RewardShiftedSpeculativeSampling(aligned_draft, ref_draft, num_draft_tokens, seed=seeds, backend=BACKEND),
        processing,
        seed_offset=10_000_000 + 1000 * num_draft_tokens,
    )
    assert_follows(codes, expected, f"SSS K={num_draft_tokens} {processing}")


@pytest.mark.parametrize("num_draft_tokens", [1, 3])
def test_equal_drafts_reduce_to_standard_speculative_sampling(target, aligned_draft, num_draft_tokens):
    ids, mask = prompts_with_left_padding()
    # No truncation: standard mode truncates the draft like the target, SSS never truncates the drafts.
    kwargs = dict(input_ids=ids.repeat(4, 1), attention_mask=mask.repeat(4, 1), do_sample=True, temperature=0.8,
                  top_k=0, max_new_tokens=16, pad_token_id=PAD, return_dict_in_generate=True)
    standard = target.generate(**kwargs, custom_generate=SpeculativeSampling(aligned_draft, num_draft_tokens, seed=4, backend=BACKEND))
    shifted = target.generate(**kwargs, custom_generate=RewardShiftedSpeculativeSampling(
        aligned_draft, aligned_draft, num_draft_tokens, seed=4, backend=BACKEND))
    assert torch.equal(shifted.sequences, standard.sequences)
    assert shifted.acceptance_rate == standard.acceptance_rate


@torch.no_grad()
def greedy_shifted_decoding(target, aligned_draft, ref_draft, ids, mask, new_tokens, eos):
    """Greedy decoding of argmax(pi_ref * pi_r / pi_d), recomputing every model on the whole prefix."""
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(new_tokens):
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        scores = [m(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float().log_softmax(-1)
                  for m in (target, aligned_draft, ref_draft)]
        token = (scores[0] + scores[1] - scores[2]).argmax(-1).masked_fill(finished, PAD)
        finished |= token == eos
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if bool(finished.all()):
            break
    return ids


@pytest.mark.parametrize("num_draft_tokens", [1, 4])
def test_greedy_is_the_greedy_decoding_of_the_shifted_target(target, aligned_draft, ref_draft, num_draft_tokens):
    ids, mask = prompts_with_left_padding()
    eos = target.generation_config.eos_token_id
    expected = greedy_shifted_decoding(target, aligned_draft, ref_draft, ids, mask, 20, eos)
    out = target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=PAD,
                          custom_generate=RewardShiftedSpeculativeSampling(aligned_draft, ref_draft, num_draft_tokens, backend=BACKEND))
    assert torch.equal(out, expected)


def test_rows_do_not_depend_on_the_batch(target, aligned_draft, ref_draft):
    prompts = PROMPT.repeat(3, 1)
    seeds = torch.tensor([21, 22, 23])
    kwargs = dict(do_sample=True, temperature=0.8, top_k=5, max_new_tokens=12, pad_token_id=PAD)
    batch = target.generate(input_ids=prompts, **kwargs, custom_generate=RewardShiftedSpeculativeSampling(
        aligned_draft, ref_draft, 2, seed=seeds, backend=BACKEND))
    for row in range(3):
        alone = target.generate(input_ids=prompts[row:row + 1], **kwargs, custom_generate=RewardShiftedSpeculativeSampling(
            aligned_draft, ref_draft, 2, seed=seeds[row:row + 1], backend=BACKEND))
        assert torch.equal(batch[row, :alone.shape[1]], alone[0])
        assert bool((batch[row, alone.shape[1]:] == PAD).all())


def test_bad_inputs_name_the_argument(target, aligned_draft):
    with pytest.raises(ValueError, match="num_draft_tokens"):
        RewardShiftedSpeculativeSampling(aligned_draft, aligned_draft, 0)
    xlnet = XLNetLMHeadModel(XLNetConfig(vocab_size=VOCAB, d_model=16, n_layer=1, n_head=2, d_inner=32))
    with pytest.raises(ValueError, match="ref_draft .*cache"):
        RewardShiftedSpeculativeSampling(aligned_draft, xlnet, 2)
    with pytest.raises(ValueError, match="aligned_draft .*cache"):
        RewardShiftedSpeculativeSampling(xlnet, aligned_draft, 2)
    with torch.device("meta"):
        meta_ref = tiny_llama(2)
    with pytest.raises(ValueError, match="ref_draft is on meta"):
        target.generate(input_ids=PROMPT, max_new_tokens=2,
                        custom_generate=RewardShiftedSpeculativeSampling(aligned_draft, meta_ref, 2))
    with pytest.raises(ValueError, match="vocabulary"):
        target.generate(input_ids=PROMPT, max_new_tokens=2,
                        custom_generate=RewardShiftedSpeculativeSampling(aligned_draft, tiny_llama(2, vocab=VOCAB + 2), 2))
