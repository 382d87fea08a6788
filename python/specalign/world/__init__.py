"""The reference world: a small alignment setting the repository trains itself.

Review-style replies from a seeded grammar, a target LM, a smaller draft LM, a
DPO-aligned draft, a proxy reward model, and the gold reward they approximate.
Two settings: "short" (replies of 1-4 sentences, shipped in WORLD_DIR) and "long"
(10-20 sentences, about 100-250 tokens, a gold reward that accumulates over the
answer; shipped in LONG_WORLD_DIR). The models are built by
`python -m specalign.world.train [--setting long]`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
import json

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

from specalign.world.gold_reward import gold_reward, gold_reward_long

WORLD_DIR = Path(__file__).parent / "assets"
LONG_WORLD_DIR = Path(__file__).parent / "assets_long"
SETTINGS = {"short": (WORLD_DIR, gold_reward), "long": (LONG_WORLD_DIR, gold_reward_long)}

__all__ = ["World", "load_world", "gold_reward", "gold_reward_long", "WORLD_DIR", "LONG_WORLD_DIR"]


@dataclass
class World:
    tokenizer: object
    target: LlamaForCausalLM
    draft: LlamaForCausalLM
    aligned_draft: LlamaForCausalLM
    reward_model: LlamaForSequenceClassification
    reward_tokenizer: object
    prompts: list[str]
    gold_reward: Callable[[list[str]], torch.Tensor] = gold_reward
    setting: str = "short"


def load_world(device="cpu", path: Path | None = None, setting: str = "short") -> World:
    """Load a world setting ("short" or "long") in fp32 and eval mode; all models share one tokenizer.

    ``path`` overrides the setting's shipped folder (e.g. a world just built by the training script).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {setting!r}")
    shipped, reward = SETTINGS[setting]
    path = shipped if path is None else Path(path)

    def load(model_class, name):
        model = model_class.from_pretrained(path / name, dtype=torch.float32)
        return model.to(device).eval()

    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    return World(
        tokenizer=tokenizer,
        target=load(LlamaForCausalLM, "target"),
        draft=load(LlamaForCausalLM, "draft"),
        aligned_draft=load(LlamaForCausalLM, "aligned_draft"),
        reward_model=load(LlamaForSequenceClassification, "reward_model"),
        reward_tokenizer=tokenizer,
        prompts=json.loads((path / "prompts.json").read_text()),
        gold_reward=reward,
        setting=setting,
    )
