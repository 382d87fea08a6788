"""The long setting of the bundled world: long answers, an accumulating gold reward, a proxy that reads prefixes."""
import pytest
import torch

from specalign import RewardModel
from specalign.world import LONG_WORLD_DIR, WORLD_DIR, gold_reward_long, load_world
from specalign.world.grammar import sample_corpus
from specalign.world.prefix_correlation import prefix_correlations

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return load_world(setting="long")


@pytest.fixture(scope="module")
def heldout_replies(world):
    """Grammar replies the models never saw (another seed): prompt ids, answer ids ending in eos, gold reward."""
    pairs = sample_corpus(96, seed=4321, setting="long")
    tokenizer = world.tokenizer
    prompts = [torch.tensor(tokenizer(prompt)["input_ids"]) for prompt, _ in pairs]
    wholes = tokenizer([f"{prompt} {reply}" for prompt, reply in pairs])["input_ids"]
    answers = [torch.tensor(whole[len(prompt):] + [tokenizer.eos_token_id]) for prompt, whole in zip(prompts, wholes)]
    gold = gold_reward_long([f"{prompt} {reply}" for prompt, reply in pairs])
    return prompts, answers, gold


def test_long_world_loads_with_one_shared_vocab(world):
    vocab_size = len(world.tokenizer)
    for model in (world.target, world.draft, world.aligned_draft, world.reward_model):
        assert model.config.vocab_size == vocab_size
        assert model.config.pad_token_id == world.tokenizer.pad_token_id
        assert not model.training
    assert world.setting == "long" and world.gold_reward is gold_reward_long
    assert len(world.prompts) == 16
    assert world.target.num_parameters() > 2 * world.draft.num_parameters()
    shipped = [f for folder in (WORLD_DIR, LONG_WORLD_DIR) for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in shipped) <= 42e6


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="setting must be one of"):
        load_world(setting="medium")


def test_long_gold_reward_is_deterministic_and_hand_checked():
    texts = [
        "review of the pizza: the pizza was great and the sauce was great. awful service. "
        "the taste was great but the price was bad.",
        "how was the phone: great. great! great? nice",
    ]
    first, second = gold_reward_long(texts), gold_reward_long(texts)
    assert first.dtype == torch.float32 and torch.equal(first, second)
    # 1: (great - 0.5 for its repeat) + (-awful) + (great - bad) + topic = 0.5 - 1 + 0 + 1;
    # 2: four sentences (the last unfinished), each earning its sentiment word again, no topic.
    assert first.tolist() == [0.5, 4.0]


def test_long_gold_reward_accumulates_over_sentences():
    prompt = "thoughts on the album: "
    sentences = ["the music was lovely.", " the ending was dull and boring.", " i found the plot superb."]
    rewards = gold_reward_long([prompt + "".join(sentences[:k]) for k in range(1, 4)]).tolist()
    assert rewards == [1.0, -1.0, 0.0]


def test_long_gold_reward_penalizes_replies_beyond_150_words():
    reply = " ".join("x" * length for length in range(1, 161))
    assert gold_reward_long([f"review of the movie: {reply}"]).item() == pytest.approx(-0.2 * 10)


def test_proxy_tracks_the_final_gold_reward_and_prefixes_predict_it(world, heldout_replies):
    prompts, answers, gold = heldout_replies
    rm = RewardModel(world.reward_model, world.reward_tokenizer)
    table = {row.length: row for row in prefix_correlations(rm, prompts, answers, gold, (16, 64, 256))}
    assert table[256].pearson > 0.8
    assert table[64].pearson > 0.5
    assert 0 < table[16].pearson < table[256].pearson


@pytest.mark.slow
def test_target_writes_long_replies_that_end(world):
    torch.manual_seed(0)
    prompts = [p for p in world.prompts[:8] for _ in range(4)]
    encoded = world.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = world.target.generate(**encoded, do_sample=True, max_new_tokens=256)
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    ended = (new_tokens == world.tokenizer.eos_token_id).any(dim=1)
    lengths = (new_tokens != world.tokenizer.pad_token_id).sum(dim=1).float()
    assert ended.float().mean() > 0.8
    assert lengths.mean() > 100
