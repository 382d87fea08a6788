"""RewardModel: batched scoring equals scoring alone, no pad token is shown, text round trips, bad input."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from specalign import RewardModel

WORDS = ["<pad>", "<eos>", "<unk>", "user", "assistant"] + [f"w{i}" for i in range(43)]
PAD = 0


def word_tokenizer(words):
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=PAD)
    return LlamaForSequenceClassification(config).eval()


def random_pairs(count, generator):
    """Prompts and answers of different lengths, token ids 3.. (never the pad token)."""
    prompts = [torch.randint(3, len(WORDS), (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator)
               for _ in range(count)]
    answers = [torch.randint(3, len(WORDS), (int(torch.randint(0, 9, (1,), generator=generator)),), generator=generator)
               for _ in range(count)]
    return prompts, answers


def score_alone(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None]).logits[0, 0].float()


def test_batched_scores_equal_scores_alone(reward_model):
    prompts, answers = random_pairs(13, torch.Generator().manual_seed(1))
    # 24 tokens per chunk: several chunks of different widths, most of them padded.
    scores = RewardModel(reward_model, max_batch_tokens=24)(prompts, answers)
    expected = torch.stack([score_alone(reward_model, torch.cat([p, a])) for p, a in zip(prompts, answers)])
    assert scores.dtype == torch.float32 and scores.shape == (13,)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


def test_padding_is_masked_and_on_the_right(reward_model):
    prompts, answers = random_pairs(9, torch.Generator().manual_seed(2))
    seen = []
    hook = reward_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone())),
        with_kwargs=True,
    )
    try:
        RewardModel(reward_model, max_batch_tokens=30)(prompts, answers)
    finally:
        hook.remove()
    shown = sorted(ids[row][mask[row].bool()].tolist() for ids, mask in seen for row in range(ids.shape[0]))
    assert shown == sorted(torch.cat([p, a]).tolist() for p, a in zip(prompts, answers))
    for ids, mask in seen:
        lengths = mask.sum(-1)
        assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())  # right padding only
        assert not bool((ids[mask.bool()] == PAD).any())


def test_different_tokenizer_round_trips_through_text(reward_model):
    generator_words = WORDS[:3] + WORDS[:2:-1]  # same words, other ids
    generator_tokenizer, reward_tokenizer = word_tokenizer(generator_words), word_tokenizer(WORDS)
    prompt = generator_tokenizer("w1 w2", return_tensors="pt").input_ids[0]
    answer = generator_tokenizer("w3 w4 w5", return_tensors="pt").input_ids[0]
    rm = RewardModel(reward_model, reward_tokenizer, generator_tokenizer=generator_tokenizer)
    expected = score_alone(reward_model, reward_tokenizer("w1 w2 w3 w4 w5", return_tensors="pt").input_ids[0])
    torch.testing.assert_close(rm([prompt], [answer]), expected[None], rtol=0, atol=1e-5)

    reward_tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    expected = score_alone(reward_model, reward_tokenizer("user w1 w2 assistant w3 w4 w5", return_tensors="pt").input_ids[0])
    torch.testing.assert_close(rm([prompt], [answer]), expected[None], rtol=0, atol=1e-5)


def test_same_vocabulary_scores_ids_directly(reward_model):
    tokenizer = word_tokenizer(WORDS)
    rm = RewardModel(reward_model, tokenizer, generator_tokenizer=word_tokenizer(WORDS))
    assert not rm.rescore_text
    prompts, answers = random_pairs(3, torch.Generator().manual_seed(3))
    torch.testing.assert_close(rm(prompts, answers), RewardModel(reward_model)(prompts, answers), rtol=0, atol=0)


def test_callables_on_ids_and_on_text():
    tokenizer = word_tokenizer(WORDS)
    prompts = [tokenizer("w1 w2", return_tensors="pt").input_ids[0]]
    answers = [tokenizer("w3", return_tensors="pt").input_ids[0]]
    on_ids = RewardModel(lambda p, a: torch.tensor([float(len(p[0]) + len(a[0]))]))
    assert on_ids(prompts, answers).tolist() == [3.0]
    received = []
    on_text = RewardModel(lambda p, a: received.append((p, a)) or [1.5], input_type="text", generator_tokenizer=tokenizer)
    assert on_text(prompts, answers).tolist() == [1.5]
    assert received == [(["w1 w2"], [" w3"])]


def test_score_texts(reward_model):
    tokenizer = word_tokenizer(WORDS)
    expected = score_alone(reward_model, tokenizer("w7 w8 w9", return_tensors="pt").input_ids[0])
    torch.testing.assert_close(RewardModel(reward_model, tokenizer).score_texts(["w7 w8 w9"]), expected[None], rtol=0, atol=1e-5)


def test_bad_input(reward_model):
    one = [torch.tensor([3, 4])]
    with pytest.raises(ValueError, match="reward_model returned scores of shape"):
        RewardModel(lambda p, a: torch.zeros(2))(one, one)
    with pytest.raises(ValueError, match="input_type"):
        RewardModel(lambda p, a: [0.0], input_type="tokens")
    with pytest.raises(ValueError, match="generator_tokenizer"):
        RewardModel(lambda p, a: [0.0], input_type="text")
    with pytest.raises(ValueError, match="callable"):
        RewardModel(42)
    config = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=1, pad_token_id=None)
    with pytest.raises(ValueError, match="pad_token_id"):
        RewardModel(LlamaForSequenceClassification(config))
    config.pad_token_id, config.num_labels = 0, 2
    with pytest.raises(ValueError, match="num_labels"):
        RewardModel(LlamaForSequenceClassification(config))
