"""SpeculativeSampling through ``generate``: exact sequence distribution, greedy equality, ragged
batches, EOS and stopping inside a draft, row independence, bad inputs."""
import pytest
import torch
from helpers import (
    BACKEND,
    BOS,
    EOS,
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
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from specalign import SpeculativeSampling, speculative_sampling
from specalign.speculative_sampling import row_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def draft():
    return tiny_llama(1)


@pytest.mark.slow
@pytest.mark.parametrize("num_draft_tokens", [1, 3])
@pytest.mark.parametrize("processing", PROCESSING)
def test_sequences_follow_the_target_distribution(target, draft, num_draft_tokens, processing):
    continuations = all_continuations()
    log_probs = processed_log_probs(step_log_probs(target, PROMPT, continuations),
                                    processing.get("temperature", 1.0), processing.get("top_k"))
    expected = exact_distribution(log_probs, continuations)
    codes = sample_codes(target, lambda seeds: SpeculativeSampling(draft, num_draft_tokens, seed=seeds, backend=BACKEND),
                         processing, seed_offset=1000 * num_draft_tokens)
    assert_follows(codes, expected, f"speculative sampling K={num_draft_tokens} {processing}")


@pytest.mark.parametrize("num_draft_tokens", [1, 4])
@pytest.mark.parametrize("extra", [pytest.param({}, id="plain"), pytest.param({"repetition_penalty": 1.5}, id="repetition_penalty")])
def test_greedy_equals_target_greedy(target, draft, num_draft_tokens, extra):
    ids, mask = prompts_with_left_padding()
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=PAD, **extra)
    expected = target.generate(**kwargs)
    out = target.generate(**kwargs, custom_generate=SpeculativeSampling(draft, num_draft_tokens, backend=BACKEND))
    assert torch.equal(out, expected)


def test_greedy_with_draft_equal_to_target_stops_at_eos_inside_a_draft(target):
    ids, mask = prompts_with_left_padding()
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=PAD)
    eos = int(target.generate(**kwargs)[0, ids.shape[1] + 2])  # row 0's third new token ends row 0
    expected = target.generate(**kwargs, eos_token_id=eos)
    out = target.generate(**kwargs, eos_token_id=eos, return_dict_in_generate=True,
                          custom_generate=SpeculativeSampling(target, 4, backend=BACKEND))
    assert torch.equal(out.sequences, expected)
    row0 = out.sequences[0, ids.shape[1]:]
    assert int(row0[2]) == eos and bool((row0[3:] == PAD).all())
    assert out.acceptance_rate == 1.0


class StopAfterToken(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_user_stopping_criteria_cut_rows_like_hf(target, draft):
    ids, mask = prompts_with_left_padding()
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=PAD)
    stop_token = int(target.generate(**kwargs)[1, ids.shape[1] + 3])
    criteria = StoppingCriteriaList([StopAfterToken(stop_token)])
    expected = target.generate(**kwargs, stopping_criteria=criteria)
    out = target.generate(**kwargs, stopping_criteria=criteria, custom_generate=SpeculativeSampling(draft, 3, backend=BACKEND))
    assert torch.equal(out, expected)


def test_draft_equal_to_target_accepts_every_draft(target):
    ids, mask = prompts_with_left_padding()
    out = target.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.9, max_new_tokens=24,
                          pad_token_id=PAD, eos_token_id=None, return_dict_in_generate=True,
                          custom_generate=SpeculativeSampling(target, 3, seed=7, backend=BACKEND))
    assert out.sequences.shape == (3, ids.shape[1] + 24)
    assert out.acceptance_rate == 1.0
    assert out.tokens_per_target_call == 4.0  # K accepted drafts plus the bonus token, every step


def test_output_reports_statistics(target, draft):
    ids, mask = prompts_with_left_padding()
    out = target.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=10, pad_token_id=PAD,
                          return_dict_in_generate=True, custom_generate=SpeculativeSampling(draft, 2, seed=3, backend=BACKEND))
    assert 0.0 <= out.acceptance_rate <= 1.0
    assert 1.0 <= out.tokens_per_target_call <= 3.0
    steps = out.target_calls - 1  # the prompt's forward, then one per step
    assert out.draft_calls == 1 + 3 * steps  # K + 1 draft forwards per step
    new = out.sequences[:, ids.shape[1]:]
    ended = (new == EOS).long().cumsum(-1) - (new == EOS).long() > 0
    assert bool((new[ended] == PAD).all())


def test_rows_do_not_depend_on_the_batch(target, draft):
    prompts = torch.tensor([[BOS, 3, 4], [BOS, 8, 9], [BOS, 5, 5], [BOS, 6, 2]])
    seeds = torch.tensor([11, -5, 2**40, 3])
    kwargs = dict(do_sample=True, temperature=0.8, max_new_tokens=16, pad_token_id=PAD)
    batch = target.generate(input_ids=prompts, custom_generate=SpeculativeSampling(draft, 3, seed=seeds, backend=BACKEND), **kwargs)
    for row in range(len(prompts)):
        alone = target.generate(input_ids=prompts[row:row + 1], **kwargs,
                                custom_generate=SpeculativeSampling(draft, 3, seed=seeds[row:row + 1], backend=BACKEND))
        width = alone.shape[1]
        assert torch.equal(batch[row, :width], alone[0])
        assert bool((batch[row, width:] == PAD).all())


def test_same_int_seed_same_tokens_and_row_seeds_are_per_row(target, draft):
    kwargs = dict(input_ids=PROMPT.expand(4, -1), do_sample=True, max_new_tokens=12, pad_token_id=PAD)
    first = target.generate(**kwargs, custom_generate=SpeculativeSampling(draft, 2, seed=5, backend=BACKEND))
    second = target.generate(**kwargs, custom_generate=SpeculativeSampling(draft, 2, seed=5, backend=BACKEND))
    assert torch.equal(first, second)
    assert torch.equal(row_seeds(5, 4), row_seeds(5, 9)[:4])
    assert len(set(row_seeds(5, 4).tolist())) == 4


def test_padded_logits_are_sliced_to_the_tokenizer_vocabulary(target):
    wide_draft = tiny_llama(1, vocab=VOCAB + 6)
    with pytest.raises(ValueError, match="vocabulary"):
        target.generate(input_ids=PROMPT, max_new_tokens=2, custom_generate=SpeculativeSampling(wide_draft, 2))
    out = target.generate(input_ids=PROMPT.expand(64, -1), do_sample=True, max_new_tokens=8, pad_token_id=PAD,
                          custom_generate=SpeculativeSampling(wide_draft, 2, seed=1, tokenizer=range(VOCAB), backend=BACKEND))
    assert int(out.max()) < VOCAB


def test_bad_inputs_raise_value_errors_naming_the_argument(target, draft):
    with pytest.raises(ValueError, match="num_draft_tokens"):
        SpeculativeSampling(draft, 0)
    with pytest.raises(ValueError, match="backend"):
        SpeculativeSampling(draft, 2, backend="cuda")
    xlnet = XLNetLMHeadModel(XLNetConfig(vocab_size=VOCAB, d_model=16, n_layer=1, n_head=2, d_inner=32))
    with pytest.raises(ValueError, match="draft .*cache"):
        SpeculativeSampling(xlnet, 2)
    with torch.device("meta"):
        meta_draft = tiny_llama(1)
    with pytest.raises(ValueError, match="draft is on meta"):
        target.generate(input_ids=PROMPT, max_new_tokens=2, custom_generate=SpeculativeSampling(meta_draft, 2))
    other_bos = tiny_llama(1)
    other_bos.generation_config.bos_token_id = 3
    with pytest.raises(ValueError, match="bos_token_id"):
        target.generate(input_ids=PROMPT, max_new_tokens=2, custom_generate=SpeculativeSampling(other_bos, 2))
    with pytest.raises(ValueError, match="seed"):
        target.generate(input_ids=PROMPT.expand(2, -1), max_new_tokens=2, pad_token_id=PAD,
                        custom_generate=SpeculativeSampling(draft, 2, seed=[1, 2, 3], backend=BACKEND))


def tiny_model(model_type, seed, scale=3.0):
    """A random tiny model of ``model_type`` (a decoder with full attention), float64, scaled up."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    sizes = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if model_type == "gpt2":
        sizes.update(n_embd=16, n_layer=2, n_head=2, n_positions=64)
    else:
        sizes.update(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=32, head_dim=8)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **sizes)).to(torch.float64).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


@pytest.mark.parametrize("model_type", sorted(speculative_sampling.HOLE_SAFE_MODEL_TYPES))
def test_masked_holes_change_no_output_where_they_are_allowed(model_type, monkeypatch):
    """The hole-safe models give the same tokens whether rejected drafts stay in the cache as masked
    holes (never compacted here) or leave it at every step, and greedy equals HF's greedy."""
    target, draft = tiny_model(model_type, 0), tiny_model(model_type, 1)
    ids, mask = prompts_with_left_padding()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=16, pad_token_id=PAD)
    monkeypatch.setattr(speculative_sampling, "COMPACT_AT_HOLE_FRACTION", 1.0)
    with_holes = target.generate(**kwargs, do_sample=True, custom_generate=SpeculativeSampling(draft, 3, seed=4))
    greedy = target.generate(**kwargs, do_sample=False, custom_generate=SpeculativeSampling(draft, 3))
    monkeypatch.setattr(speculative_sampling, "HOLE_SAFE_MODEL_TYPES", frozenset())
    without = target.generate(**kwargs, do_sample=True, custom_generate=SpeculativeSampling(draft, 3, seed=4))
    assert torch.equal(with_holes, without)
    assert torch.equal(greedy, target.generate(**kwargs, do_sample=False))
