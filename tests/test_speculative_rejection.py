"""Speculative Rejection and Best-of-N through ``generate(custom_generate=...)`` on tiny models."""
import pytest
import tiny_models
import torch
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MambaConfig,
    MambaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RecurrentGemmaConfig,
    RecurrentGemmaForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

from specalign import BestOfN, RewardModel, SpeculativeRejection, _compat, _hf, speculative_rejection
from specalign._cache import cache_bytes

VOCAB, PAD, EOS, BOS = 64, 0, 1, 2
SPECIAL = dict(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
N = 8


def tiny_llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **SPECIAL))


def tiny_gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, **SPECIAL))


def tiny_qwen2():
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, **SPECIAL))


ARCHITECTURES = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build().eval() for name, build in ARCHITECTURES.items()}


# Two prompts of different lengths, left-padded.
PROMPTS = torch.tensor([[PAD, PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12, 13]])
MASK = (PROMPTS != PAD).long()
PROMPT_LENGTHS = MASK.sum(-1)


def mean_token_reward(prompts, answers):
    """A reward that varies with every token: the mean answer token id."""
    return torch.tensor([a.float().mean().item() if len(a) else 0.0 for a in answers])


def generate(model, method, max_new_tokens=12, **kwargs):
    return model.generate(input_ids=PROMPTS, attention_mask=MASK, custom_generate=method, do_sample=True,
                          max_new_tokens=max_new_tokens, return_dict_in_generate=True, **kwargs)


def spr(reward=mean_token_reward, **kwargs):
    return SpeculativeRejection(reward, **{"n": N, "alpha": 0.5, "seed": 0, **kwargs})


def best_of_n(reward=mean_token_reward, **kwargs):
    return BestOfN(reward, **{"n": N, "seed": 0, **kwargs})


def test_alpha_zero_returns_best_of_n(models):
    model = models["llama"]
    pruning_off = generate(model, spr(alpha=0.0, decision_tokens=[3, 6], seed=7), sequence_bias={(EOS,): 2.0})
    baseline = generate(model, best_of_n(seed=7), sequence_bias={(EOS,): 2.0})
    assert pruning_off.decision_lengths == [3, 6] and baseline.decision_lengths == []
    assert torch.equal(pruning_off.sequences, baseline.sequences)
    torch.testing.assert_close(pruning_off.rewards, baseline.rewards, rtol=0, atol=0)
    assert torch.equal(pruning_off.candidate_tokens, baseline.candidate_tokens)
    # Some answers ended before a decision point; there they left the batch, and nothing was pruned.
    assert bool((baseline.candidate_lengths < 6).any())
    assert pruning_off.rows_decoded < baseline.rows_decoded
    assert pruning_off.tokens_generated == baseline.tokens_generated


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "qwen2"])
def test_survivors_keep_their_tokens(models, architecture):
    model = models[architecture]
    # No EOS, so every round halves the batch (finished answers joining the pool are tested above).
    pruned = generate(model, spr(decision_tokens=[2, 4, 8], seed=3), suppress_tokens=[EOS])
    unpruned = generate(model, best_of_n(seed=3), suppress_tokens=[EOS])
    assert pruned.batch_sizes == [2 * N, N, N // 2, N // 4]
    lengths = pruned.candidate_lengths
    assert int((lengths == 12).sum()) == N // 4  # the last survivors ran to the end
    for prompt in range(2):
        for sample in range(N):
            length = int(lengths[prompt, sample])
            assert torch.equal(pruned.candidate_tokens[prompt, sample, :length],
                               unpruned.candidate_tokens[prompt, sample, :length]), (prompt, sample)
    # The answer returned is a survivor's, and carries the reward Best-of-N gives that answer.
    best = pruned.candidate_rewards.masked_fill(~pruned.candidate_finished, -torch.inf).argmax(-1)
    for prompt in range(2):
        length = int(lengths[prompt, best[prompt]])
        answer = pruned.sequences[prompt, PROMPTS.shape[1]:][:length]
        assert torch.equal(answer, unpruned.candidate_tokens[prompt, best[prompt], :length])
        assert pruned.rewards[prompt] == unpruned.candidate_rewards[prompt, best[prompt]]
    assert pruned.tokens_generated < unpruned.tokens_generated


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_left_padding_changes_nothing(models, architecture):
    model = models[architecture]
    batched = generate(model, spr(decision_tokens=[3, 6]))
    alone = model.generate(input_ids=PROMPTS[:1, 3:], custom_generate=spr(decision_tokens=[3, 6]), do_sample=True,
                           max_new_tokens=12, return_dict_in_generate=True)
    # Prompt 0 has the same sample streams in both runs, so it gets the same answers, pruning and choice.
    assert torch.equal(batched.candidate_tokens[:1], alone.candidate_tokens)
    assert torch.equal(batched.candidate_rewards[:1], alone.candidate_rewards)
    answer = alone.sequences[0, 3:]
    assert torch.equal(batched.sequences[0, PROMPTS.shape[1]:][: answer.numel()], answer)


def test_mamba_with_top_k_1_equals_hf_greedy():
    """Mamba reads the mask as covering the tokens fed (a full-width mask once broadcast its one new
    token over every cached column, and the output went wrong after conv_kernel tokens)."""
    model = tiny_models.build(tiny_models.Architecture("mamba", MambaForCausalLM, MambaConfig), seed=0)
    kwargs = dict(input_ids=PROMPTS, attention_mask=MASK, max_new_tokens=10, pad_token_id=PAD)
    expected = model.generate(do_sample=False, **kwargs)
    out = model.generate(do_sample=True, top_k=1, custom_generate=spr(n=2, decision_tokens=[3, 6]), **kwargs)
    assert torch.equal(out, expected)


def test_a_recurrent_state_kept_in_modules_is_refused():
    """RecurrentGemma keeps its state in its modules and zeroes it when the batch changes size."""
    config = RecurrentGemmaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, lru_width=16,
                                  block_types=["recurrent", "attention"], **SPECIAL)
    model = RecurrentGemmaForCausalLM(config).eval()
    with pytest.raises(ValueError, match="outside the cache"):
        model.generate(input_ids=PROMPTS, attention_mask=MASK, custom_generate=spr(), do_sample=True, max_new_tokens=4)


def test_default_backend_matches_the_reference(models):
    default = generate(models["llama"], spr(decision_tokens=[2, 4, 8]))
    reference = generate(models["llama"], spr(decision_tokens=[2, 4, 8], backend="reference"))
    assert torch.equal(default.candidate_tokens, reference.candidate_tokens)
    assert torch.equal(default.sequences, reference.sequences)


def test_returns_generate_shaped_ids(models):
    model = models["gpt2"]
    ids = model.generate(input_ids=PROMPTS, attention_mask=MASK, custom_generate=spr(decision_tokens=[4]),
                         do_sample=True, max_new_tokens=12)
    assert ids.dtype == torch.long and ids.shape[0] == 2
    assert torch.equal(ids, generate(model, spr(decision_tokens=[4])).sequences)
    assert torch.equal(ids[:, : PROMPTS.shape[1]], PROMPTS)


def test_finished_short_answer_survives(models):
    def shorter_is_better(prompts, answers):
        return torch.tensor([-float(len(a)) for a in answers])

    out = generate(models["llama"], spr(shorter_is_better, decision_tokens=[4, 8], seed=2), sequence_bias={(EOS,): 1.0})
    finished, lengths = out.candidate_finished, out.candidate_lengths
    for prompt in range(2):
        shortest = int(lengths[prompt][finished[prompt]].min())
        assert shortest <= 4, "the test needs an answer that finished before the first decision"
        answer = out.sequences[prompt, PROMPTS.shape[1]:]
        assert int(answer[shortest - 1]) == EOS and bool((answer[shortest:] == PAD).all())
        assert float(out.rewards[prompt]) == -shortest
    # Decoding went on after the short answers finished; they left the batch at the first decision
    # (which keeps 4 of each prompt's 8, finished ones included), and stayed in the pool.
    assert out.decision_lengths == [4, 8] and int(lengths.max()) == 8
    assert out.batch_sizes[1] < 2 * round(0.5 * N)


def test_ties_go_to_the_lower_sample_index(models):
    out = generate(models["llama"], spr(lambda p, a: torch.zeros(len(a)), decision_tokens=[2]), suppress_tokens=[EOS])
    assert out.batch_sizes == [2 * N, N]
    assert torch.equal(out.candidate_lengths > 2, (torch.arange(N) < N // 2).expand(2, N))
    assert torch.equal(out.sequences[:, PROMPTS.shape[1]:], out.candidate_tokens[:, 0, :12])


def test_schedule_follows_the_budget(models):
    model = models["llama"]
    width = PROMPTS.shape[1]
    budget = 2 * N * (width + 2)  # the first decision after 2 new tokens
    out = generate(model, spr(max_batch_tokens=budget, alpha=0.5), max_new_tokens=24, suppress_tokens=[EOS])
    assert out.decision_lengths == [budget // rows - width for rows in out.batch_sizes[: len(out.decision_lengths)]]
    # Halving the batch from 16 rows to 8 moves the next decision from 2 to 10 new tokens; at 4 rows
    # the budget holds all 24 tokens, so the last round runs to the end.
    assert out.batch_sizes == [16, 8, 4] and out.decision_lengths == [2, 10]

    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    cache = DynamicCache(config=config)
    model(input_ids=PROMPTS, attention_mask=MASK, use_cache=True, **{_compat.cache_argument(model): cache})
    assert cache_bytes(cache) == (kv_bytes, 0)
    # A budget in bytes counts working memory: per row also the logits buffers, ids, masks and pool.
    per_row = (speculative_rejection.LOGIT_COPIES * VOCAB * 4 + _hf.activation_bytes(model, width + 24)
               + 3 * (width + 24) * 8)
    planned = 16 * (per_row + (width + 2) * kv_bytes)  # 16 rows fit 2 new tokens, as above
    memory_budget = int(planned / speculative_rejection.MODELLED_SHARE) + 1
    by_bytes = generate(model, spr(memory_budget=memory_budget, alpha=0.5), max_new_tokens=24, suppress_tokens=[EOS])
    assert by_bytes.decision_lengths[0] == 2
    planned = int(memory_budget * speculative_rejection.MODELLED_SHARE)
    assert by_bytes.decision_lengths == [(planned // rows - per_row) // kv_bytes - width
                                         for rows in by_bytes.batch_sizes[: len(by_bytes.decision_lengths)]]

    sized = generate(model, spr(n=None, max_batch_tokens=budget, alpha=0.5), max_new_tokens=24)
    assert sized.peak_batch_size == 2 * (budget // (2 * (width + 3)))  # first decision at max_new_tokens / 8


def test_reward_model_sees_no_padding(models):
    seen = []

    def recording_reward(prompts, answers):
        seen.extend(zip(prompts, answers))
        return mean_token_reward(prompts, answers)

    out = generate(models["qwen2"], spr(recording_reward, decision_tokens=[4, 8]), suppress_tokens=[PAD],
                   sequence_bias={(EOS,): 2.0})
    assert out.reward_calls == 3 and len(seen) == sum(out.batch_sizes)
    assert out.reward_tokens_scored == sum(len(p) + len(a) for p, a in seen)
    unpadded = [PROMPTS[i][MASK[i].bool()] for i in range(2)]
    for prompt, answer in seen:
        assert any(torch.equal(prompt, p) for p in unpadded)
        assert not bool((answer == PAD).any())
        assert not bool((answer[:-1] == EOS).any())  # nothing after an answer's end
    assert any(int(answer[-1]) == EOS for _, answer in seen)


def test_hf_reward_model_end_to_end(models):
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_labels=1, pad_token_id=PAD)
    reward_model = RewardModel(LlamaForSequenceClassification(config).eval())
    out = generate(models["llama"], spr(reward_model, decision_tokens=[4]))
    for prompt in range(2):
        answer = out.sequences[prompt, PROMPTS.shape[1]:]
        alone = reward_model([PROMPTS[prompt][MASK[prompt].bool()]], [answer])
        torch.testing.assert_close(out.rewards[prompt : prompt + 1], alone, rtol=0, atol=1e-5)


def test_progress_bar_is_opt_in(models, capsys):
    generate(models["gpt2"], spr(decision_tokens=[4]), max_new_tokens=4)
    assert "SpeculativeRejection" not in capsys.readouterr().err
    generate(models["gpt2"], spr(decision_tokens=[4], progress=True), max_new_tokens=4)
    assert "SpeculativeRejection" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=1.0), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(n=0), "n must be"),
        (dict(decision_tokens=[4, 4]), "decision_tokens"),
        (dict(memory_budget=10**6, max_batch_tokens=100), "memory_budget"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spr(**kwargs)


@pytest.mark.parametrize("seed", [1.5, True, "3"])
def test_seed_must_be_an_int(seed):
    with pytest.raises(TypeError, match="seed"):
        spr(seed=seed)


def test_bad_generate_calls(models):
    model = models["llama"]
    with pytest.raises(ValueError, match="reward_model returned scores of shape"):
        generate(model, spr(lambda p, a: torch.zeros(len(a) + 1), decision_tokens=[2]))
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, spr(), use_cache=False)
    with pytest.raises(ValueError, match="do_sample"):
        model.generate(input_ids=PROMPTS, attention_mask=MASK, custom_generate=spr(), do_sample=False, max_new_tokens=4)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_labels=1, pad_token_id=PAD)
    elsewhere = RewardModel(LlamaForSequenceClassification(config).to("meta"))
    with pytest.raises(ValueError, match="reward_model is on meta"):
        generate(model, spr(elsewhere))
    rwkv = RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                                      intermediate_size=32, context_length=64, **SPECIAL))
    with pytest.raises(ValueError, match="takes no cache"):
        generate(rwkv, spr())
