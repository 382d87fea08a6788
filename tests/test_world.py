import pytest
import torch

from specalign.world import WORLD_DIR, gold_reward, load_world
from specalign.world.grammar import sample_corpus

PROMPTS_USED = 4
SAMPLES_PER_PROMPT = 64
MAX_NEW_TOKENS = 40


@pytest.fixture(scope="module")
def world():
    return load_world()


@torch.no_grad()
def sample(world, model, seed):
    """Texts "<prompt> <reply>" and whether each reply ended with eos."""
    torch.manual_seed(seed)
    prompts = [p for p in world.prompts[:PROMPTS_USED] for _ in range(SAMPLES_PER_PROMPT)]
    encoded = world.tokenizer(prompts, padding=True, return_tensors="pt")
    output = model.generate(**encoded, do_sample=True, max_new_tokens=MAX_NEW_TOKENS)
    new_tokens = output[:, encoded["input_ids"].shape[1] :]
    texts = world.tokenizer.batch_decode(output, skip_special_tokens=True)
    ended = (new_tokens == world.tokenizer.eos_token_id).any(dim=1)
    return texts, ended


@pytest.fixture(scope="module")
def target_samples(world):
    return sample(world, world.target, seed=1)


def test_world_loads_with_one_shared_vocab(world):
    vocab_size = len(world.tokenizer)
    for model in (world.target, world.draft, world.aligned_draft, world.reward_model):
        assert model.config.vocab_size == vocab_size
        assert model.config.pad_token_id == world.tokenizer.pad_token_id
        assert not model.training
    assert world.tokenizer.padding_side == "left"
    assert len(world.prompts) == 16
    assert world.target.num_parameters() > 2 * world.draft.num_parameters()
    assert sum(f.stat().st_size for f in WORLD_DIR.rglob("*") if f.is_file()) <= 30e6


def test_gold_reward_is_deterministic_and_matches_the_formula():
    texts = [
        "review of the pizza: the pizza was great and really great.",
        "how was the phone: awful battery, dull screen.",
    ]
    first, second = gold_reward(texts), gold_reward(texts)
    assert first.dtype == torch.float32
    assert torch.equal(first, second)
    # great counted once (+1), topic named (+1), "great" repeated (-0.5); then -2 negatives.
    assert first.tolist() == [1.5, -2.0]


def test_replies_beyond_twenty_words_are_penalized():
    long_reply = "review of the movie: " + " ".join("x" * length for length in range(1, 26))
    assert gold_reward([long_reply]).item() == pytest.approx(-0.2 * 5)


def test_target_is_a_better_language_model_than_the_draft(world):
    tokenizer = world.tokenizer
    texts = [f"{p} {r}" for p, r in sample_corpus(512, seed=12345)]
    sequences = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    lengths = torch.tensor([len(seq) for seq in sequences])
    width = int(lengths.max())
    ids = torch.tensor([seq + [tokenizer.pad_token_id] * (width - len(seq)) for seq in sequences])
    mask = (torch.arange(width) < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        target_loss = world.target(input_ids=ids, attention_mask=mask, labels=labels).loss
        draft_loss = world.draft(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert target_loss < draft_loss - 0.01


def test_aligned_draft_earns_clearly_more_gold_reward(world):
    draft_texts, _ = sample(world, world.draft, seed=2)
    aligned_texts, _ = sample(world, world.aligned_draft, seed=2)
    gain = gold_reward(aligned_texts).mean() - gold_reward(draft_texts).mean()
    assert gain > 1.0


def test_target_replies_usually_end_with_eos(target_samples):
    _, ended = target_samples
    assert ended.float().mean() > 0.8


def test_proxy_reward_tracks_gold_reward_and_best_of_n_helps(world, target_samples):
    texts, _ = target_samples
    encoded = world.reward_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        proxy = world.reward_model(**encoded).logits[:, 0]
    gold = gold_reward(texts)
    assert torch.corrcoef(torch.stack([proxy, gold]))[0, 1] > 0.5

    proxy_groups, gold_groups = proxy.view(-1, 16), gold.view(-1, 16)
    best_of_16 = gold_groups.gather(1, proxy_groups.argmax(1, keepdim=True)).mean()
    assert best_of_16 > gold.mean() + 1.0
