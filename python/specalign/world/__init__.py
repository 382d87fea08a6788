"""The reference world: a small alignment setting the repository trains itself.

Review-style replies from a seeded grammar, a target LM, a smaller draft LM, a
DPO-aligned draft, a proxy reward model, and the gold reward they approximate.
The models are built by `python -m specalign.world.train` and shipped in WORLD_DIR.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
import json

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

from specalign.world.gold_reward import gold_reward

WORLD_DIR = Path(__file__).parent / "assets"

__all__ = ["World", "load_world", "gold_reward", "WORLD_DIR"]


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


def load_world(device="cpu", path: Path = WORLD_DIR) -> World:
    """Load the shipped world in fp32 and eval mode; all models share one tokenizer."""

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
    )
