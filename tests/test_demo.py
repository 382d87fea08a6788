"""The methods on the bundled world, and the demo command that shows them."""
import json

import pytest
import torch

from specalign import BestOfN, RewardModel, RewardShiftedSpeculativeSampling, SpeculativeRejection
from specalign.cli import METHOD_NAMES, generate_answers, main
from specalign.demo import BEYOND_THE_PAPERS
from specalign.world import load_world

SEEDS = (1, 2, 3)
MAX_NEW_TOKENS = 40


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return load_world()


def _gold_and_tokens(world, method):
    """Mean gold reward of the returned answers over the world's prompts, and tokens generated."""
    answers, tokens, _ = generate_answers(world.target, world.tokenizer, world.prompts, method,
                                          dict(do_sample=True, max_new_tokens=MAX_NEW_TOKENS))
    texts = [f"{prompt} {answer.strip()}" for prompt, answer in zip(world.prompts, answers)]
    return float(world.gold_reward(texts).mean()), tokens


@pytest.mark.slow
def test_speculative_rejection_beats_best_of_n_with_fewer_tokens(world):
    rm = RewardModel(world.reward_model, world.reward_tokenizer)
    bon = [_gold_and_tokens(world, BestOfN(rm, n=16, seed=seed)) for seed in SEEDS]
    spr = [_gold_and_tokens(world, SpeculativeRejection(rm, n=24, alpha=0.5, decision_tokens=[6, 12], seed=seed))
           for seed in SEEDS]
    bon_gold, bon_tokens = (sum(x) / len(SEEDS) for x in zip(*bon))
    spr_gold, spr_tokens = (sum(x) / len(SEEDS) for x in zip(*spr))
    print(f"Best-of-16: gold {bon_gold:.3f}, {bon_tokens:.0f} tokens; SpR(24): gold {spr_gold:.3f}, {spr_tokens:.0f} tokens")
    assert spr_gold >= bon_gold
    assert spr_tokens < bon_tokens


def _target_sampling(world, seed):
    torch.manual_seed(seed)  # plain generate draws from torch's global generator
    return _gold_and_tokens(world, None)


@pytest.mark.slow
def test_sss_beats_target_sampling_on_gold_reward(world):
    seeds = range(10)  # 160 answers per method: the mean's standard error is about 0.15
    sampled = [_target_sampling(world, seed) for seed in seeds]
    shifted = [_gold_and_tokens(world, RewardShiftedSpeculativeSampling(world.aligned_draft, world.draft, seed=seed))
               for seed in seeds]
    sampled_gold = sum(g for g, _ in sampled) / len(seeds)
    shifted_gold = sum(g for g, _ in shifted) / len(seeds)
    print(f"target sampling: gold {sampled_gold:.3f}; SSS: gold {shifted_gold:.3f}")
    assert shifted_gold > sampled_gold + 0.5


@pytest.mark.slow
def test_quick_demo_prints_every_method_and_writes_table_and_plot(tmp_path, capsys):
    assert main(["demo", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for method in ["Target sampling", *METHOD_NAMES.values(), *BEYOND_THE_PAPERS.values()]:
        assert method in table, f"{method} missing from the demo table:\n{table}"
    assert (tmp_path / "results.md").read_text().strip() in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["threads"] == 1
    assert {r["method"] for r in results["results"]} == {"Target sampling", *METHOD_NAMES.values(),
                                                         *BEYOND_THE_PAPERS.values()}
    for row in results["results"]:
        assert len(row["gold_reward"]) == len(row["tokens_generated"]) == 2
    plot = tmp_path / "reward_vs_compute.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
