"""The methods under memory pressure and bad input: budgets that bound the run, out-of-memory errors
taken as decision points or batch splits with no answer lost, and clear errors for what would
otherwise be a silent wrong answer or a crash deep inside a model."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import specalign
from specalign import BestOfN, SpeculativeRejection, SpeculativeSampling, _hf, speculative_rejection

VOCAB, PAD, EOS, BOS = 64, 0, 1, 2
SPECIAL = dict(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
PROMPTS = torch.tensor([[PAD, PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12, 13]])
MASK = (PROMPTS != PAD).long()
N = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **SPECIAL)).eval()


def mean_token_reward(prompts, answers):
    return torch.tensor([a.float().mean().item() if len(a) else 0.0 for a in answers])


def generate(model, method, max_new_tokens=12, **kwargs):
    kwargs = {"input_ids": PROMPTS, "attention_mask": MASK, **kwargs}
    return model.generate(custom_generate=method, do_sample=True, max_new_tokens=max_new_tokens,
                          return_dict_in_generate=True, **kwargs)


class OutOfMemoryAt:
    """Makes ``model``'s forward raise ``torch.OutOfMemoryError`` on its calls number ``calls``
    (counted from 1, the prefill included), as a CUDA allocator would; restores it on exit."""

    def __init__(self, model, calls):
        self.model, self.calls, self.count = model, set(calls), 0

    def __enter__(self):
        forward = type(self.model).forward.__get__(self.model)

        def failing(*args, **kwargs):
            self.count += 1
            if self.count in self.calls:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return forward(*args, **kwargs)

        self.model.forward = failing
        return self

    def __exit__(self, *exc):
        del self.model.forward


def test_a_budget_the_first_round_fills_prunes_at_once(model):
    # The budget holds the prompts and one new token for 16 rows only: the batch must be pruned at
    # the first token even though n is given (before, it decoded to the end at 7-12x the budget).
    width = PROMPTS.shape[1]
    out = generate(model, SpeculativeRejection(mean_token_reward, n=N, max_batch_tokens=2 * N * (width + 1), seed=0))
    assert out.decision_lengths[0] == 1
    for rows, length in zip(out.batch_sizes, out.decision_lengths):
        assert rows * (width + length) <= 2 * N * (width + 1) or length == out.decision_lengths[0]


def test_default_budget_is_a_share_of_available_memory():
    budget = speculative_rejection.default_memory_budget(torch.device("cpu"))
    available = speculative_rejection._available_host_memory()
    assert budget == int(available * speculative_rejection.DEFAULT_BUDGET_SHARE)


def test_n_from_the_budget_fits_it(model):
    memory_budget = 4 << 20
    out = generate(model, SpeculativeRejection(mean_token_reward, n=None, memory_budget=memory_budget, seed=0))
    rows = out.peak_batch_size
    width = PROMPTS.shape[1] + max(1, round(12 * speculative_rejection.FIRST_DECISION_FRACTION))
    kv_bytes = 2 * 2 * 2 * 8 * 4  # layers, keys and values, kv heads, head dim, float32
    full_width = PROMPTS.shape[1] + 12
    per_row = (speculative_rejection.LOGIT_COPIES * VOCAB * 4 + _hf.activation_bytes(model, full_width)
               + 3 * full_width * 8)
    assert 2 <= rows and rows * (width * kv_bytes + per_row) <= memory_budget * speculative_rejection.MODELLED_SHARE


def test_an_n_that_does_not_fit_even_the_first_token_is_refused(model):
    with pytest.raises(ValueError, match="n=64: 128 rows do not fit"):
        generate(model, SpeculativeRejection(mean_token_reward, n=64, max_batch_tokens=100, seed=0))


def test_out_of_memory_in_a_round_is_a_decision_point(model):
    plain = generate(model, SpeculativeRejection(mean_token_reward, n=N, decision_tokens=[8], seed=3),
                     suppress_tokens=[EOS])
    with OutOfMemoryAt(model, calls=[1 + 5]):  # the forward after the 5th sampled token
        squeezed = generate(model, SpeculativeRejection(mean_token_reward, n=N, decision_tokens=[8], seed=3),
                            suppress_tokens=[EOS])
    assert plain.decision_lengths == [8] and squeezed.decision_lengths[0] == 5
    # Survivors keep their tokens: each sample is a prefix of the same sample decoded without pruning.
    unpruned = generate(model, BestOfN(mean_token_reward, n=N, seed=3), suppress_tokens=[EOS])
    for prompt in range(2):
        for sample in range(N):
            length = int(squeezed.candidate_lengths[prompt, sample])
            assert torch.equal(squeezed.candidate_tokens[prompt, sample, :length],
                               unpruned.candidate_tokens[prompt, sample, :length])


def test_out_of_memory_splits_best_of_n_and_loses_nothing(model):
    expected = generate(model, BestOfN(mean_token_reward, n=N, seed=5), sequence_bias={(EOS,): 1.5})
    with OutOfMemoryAt(model, calls=[1 + 4, 1 + 4 + 3]):  # twice: the batch halves, then a half halves
        split = generate(model, BestOfN(mean_token_reward, n=N, seed=5), sequence_bias={(EOS,): 1.5})
    assert max(split.batch_sizes) == 2 * N and min(split.batch_sizes) < N
    assert torch.equal(split.sequences, expected.sequences)
    assert torch.equal(split.rewards, expected.rewards)
    assert torch.equal(split.candidate_tokens, expected.candidate_tokens)
    assert torch.equal(split.candidate_finished, expected.candidate_finished)


def test_a_single_row_out_of_memory_raises(model):
    with OutOfMemoryAt(model, calls=range(2, 100)), pytest.raises(torch.OutOfMemoryError, match="single row"):
        generate(model, BestOfN(mean_token_reward, n=1, seed=0), input_ids=PROMPTS[1:], attention_mask=MASK[1:])


def test_finished_answers_scored_minus_infinity_still_beat_unfinished_ones(model):
    def minus_infinity(prompts, answers):
        return torch.full((len(answers),), -torch.inf)

    out = generate(model, SpeculativeRejection(minus_infinity, n=N, decision_tokens=[2], seed=1),
                   sequence_bias={(EOS,): 3.0})
    best = out.candidate_rewards.argmax(-1)  # any: what matters is that the answer returned finished
    for prompt in range(2):
        answer = out.sequences[prompt, PROMPTS.shape[1]:]
        finished = [s for s in range(N) if out.candidate_finished[prompt, s]]
        assert finished, "the test needs a finished answer per prompt"
        lengths = out.candidate_lengths[prompt]
        assert any(torch.equal(answer[: int(lengths[s])], out.candidate_tokens[prompt, s, : int(lengths[s])])
                   for s in finished)
    assert best.shape == (2,)


RIGHT_PADDED = torch.tensor([[7, PAD, PAD], [8, 9, 10]])


@pytest.mark.parametrize("method", ["spr", "sd"])
def test_right_padding_and_empty_prompts_are_refused(model, method):
    make = {"spr": lambda: SpeculativeRejection(mean_token_reward, n=2, seed=0),
            "sd": lambda: SpeculativeSampling(model, 2, seed=0)}[method]
    with pytest.raises(ValueError, match="padded on the left"):
        generate(model, make(), input_ids=RIGHT_PADDED, attention_mask=(RIGHT_PADDED != PAD).long(), max_new_tokens=2)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, make(), input_ids=PROMPTS[:1, :0], attention_mask=None, max_new_tokens=2)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n=True), ValueError, "n must be"),
    (dict(alpha="0.5"), TypeError, "alpha"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        SpeculativeRejection(mean_token_reward, **kwargs)


@pytest.mark.parametrize("returned", [None, ["good", "bad"]])
def test_a_reward_callable_returning_no_numbers_is_named(model, returned):
    with pytest.raises(TypeError, match="reward_model must return"):
        generate(model, SpeculativeRejection(lambda p, a: returned, n=2, decision_tokens=[2], seed=0), max_new_tokens=4)


def test_outgrowing_learned_positions_is_refused_before_decoding():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16, **SPECIAL)).eval()
    for method in (BestOfN(mean_token_reward, n=2, seed=0), SpeculativeSampling(gpt2, 2, seed=0)):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(gpt2, method, max_new_tokens=16)


def test_stop_strings_through_stopping_criteria():
    from specalign.world import load_world

    world = load_world()
    inputs = world.tokenizer(["the food"], return_tensors="pt")
    criteria = specalign.stop_strings(world.tokenizer, ["."])
    for method in (SpeculativeSampling(world.draft, 2, seed=0), BestOfN(mean_token_reward, n=2, seed=0)):
        out = world.target.generate(**inputs, custom_generate=method, do_sample=True, max_new_tokens=40,
                                    stopping_criteria=criteria, return_dict_in_generate=True)
        text = world.tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert text.count(".") == 1 and text.rstrip().endswith("."), text
    with pytest.raises(TypeError, match="strings"):
        specalign.stop_strings(world.tokenizer, ".")
    refusing = (SpeculativeSampling(world.draft, 2, seed=0), BestOfN(mean_token_reward, n=2, seed=0),
                BestOfN(mean_token_reward, n=2, seed=0, draft=world.draft), specalign.ConfidenceEarlyStop(n=4, warmup=2),
                specalign.BeamSearch(world.aligned_draft, world.draft))
    for method in refusing:
        with pytest.raises(ValueError, match=r"stop_strings=\['\.'\]: .*specalign.stop_strings\(tokenizer"):
            world.target.generate(**inputs, custom_generate=method, do_sample=True, max_new_tokens=4,
                                  stop_strings=["."], tokenizer=world.tokenizer)
