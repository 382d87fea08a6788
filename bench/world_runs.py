"""Shared by the benchmarks that run methods on the bundled world (``specalign.world``): one
measured ``generate`` call, the counts of every model's forward passes, and a table.

A run reports the mean gold and proxy reward of the returned answers over the prompts, the tokens
the target sampled (over all candidates), the target's forward passes and the token positions they
processed (rows times positions fed, the prefill included: a speculative verification feeds ``K + 1``
per row), the positions the small models processed, and the wall time.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from specalign import RewardModel
from specalign.world import load_world


@dataclasses.dataclass
class Run:
    method: str
    setting: str
    gold: float
    proxy: float
    tokens: int
    target_calls: int
    target_positions: int
    small_positions: int
    seconds: float


class ForwardCounter:
    """Counts a model's forward calls and the token positions they are fed."""

    def __init__(self, model):
        self.calls = self.positions = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += ids.numel()

    def reset(self):
        self.calls = self.positions = 0


def world_setup(num_prompts: int):
    """The world, its first ``num_prompts`` prompts, the proxy reward model, and forward counters."""
    torch.set_num_threads(1)
    world = load_world()
    counters = {name: ForwardCounter(getattr(world, name)) for name in ("target", "draft", "aligned_draft")}
    reward = RewardModel(world.reward_model, world.reward_tokenizer)
    return world, world.prompts[:num_prompts], reward, counters


def measure(world, prompts, reward, counters, label, setting, method, max_new_tokens, seed) -> Run:
    """One ``generate`` call of ``method`` (``None``: plain sampling) on ``prompts``."""
    torch.manual_seed(seed)
    inputs = world.tokenizer(prompts, return_tensors="pt", padding=True)
    for counter in counters.values():
        counter.reset()
    start = time.perf_counter()
    out = world.target.generate(**inputs, custom_generate=method, do_sample=True, max_new_tokens=max_new_tokens,
                                return_dict_in_generate=True)
    seconds = time.perf_counter() - start
    answer_ids = out.sequences[:, inputs["input_ids"].shape[1]:]
    answers = world.tokenizer.batch_decode(answer_ids, skip_special_tokens=True)
    texts = [f"{prompt} {answer.strip()}" for prompt, answer in zip(prompts, answers)]
    tokens = getattr(out, "tokens_generated", None)
    if tokens is None:
        tokens = int((answer_ids != world.tokenizer.pad_token_id).sum())
    return Run(label, setting, float(world.gold_reward(texts).mean()), float(reward.score_texts(texts).mean()),
               int(tokens), counters["target"].calls, counters["target"].positions,
               counters["draft"].positions + counters["aligned_draft"].positions, seconds)


def mean_runs(runs: list[Run]) -> Run:
    """The mean of runs of one method over seeds (counts averaged and rounded)."""
    first = runs[0]
    average = {field.name: sum(getattr(r, field.name) for r in runs) / len(runs)
               for field in dataclasses.fields(Run) if field.name not in ("method", "setting")}
    return Run(first.method, first.setting, **{k: (round(v) if isinstance(getattr(first, k), int) else v)
                                              for k, v in average.items()})


def table(runs: list[Run], reference: str | None = None) -> str:
    """A Markdown table; ``reference`` names the run (method and setting) the time ratios compare with."""
    base = next((r for r in runs if f"{r.method} {r.setting}".strip() == reference), None)
    lines = ["| method | setting | gold reward | proxy reward | target tokens | target forwards | "
             "target positions | small-model positions | wall s | time vs " + (reference or "-") + " |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ratio = f"{r.seconds / base.seconds:.2f}x" if base else "-"
        lines.append(f"| {r.method} | {r.setting} | {r.gold:.3f} | {r.proxy:.3f} | {r.tokens} | {r.target_calls} | "
                     f"{r.target_positions} | {r.small_positions} | {r.seconds:.2f} | {ratio} |")
    return "\n".join(lines)
